{{/* Names */}}
{{- define "streamspace.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "streamspace.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Labels: every object; selector labels take a component. */}}
{{- define "streamspace.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "streamspace.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "streamspace.selectorLabels" -}}
app.kubernetes.io/name: {{ include "streamspace.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "streamspace.image" -}}
{{- $tag := default .ctx.Chart.AppVersion .image.tag -}}
{{- if .image.registry -}}
{{- printf "%s/%s:%s" (trimSuffix "/" .image.registry) .image.repository $tag -}}
{{- else -}}
{{- printf "%s:%s" .image.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "streamspace.externalDatabase" -}}
{{- if .Values.database.host }}true{{ end -}}
{{- end -}}

{{- define "streamspace.bundledDatabase" -}}
{{- if and (not .Values.database.host) .Values.postgresql.enabled }}true{{ end -}}
{{- end -}}

{{- define "streamspace.databaseHost" -}}
{{- if .Values.database.host -}}
{{- .Values.database.host -}}
{{- else if .Values.postgresql.enabled -}}
{{- printf "%s-postgresql" (include "streamspace.fullname" .) -}}
{{- else -}}
{{- fail "set database.host (an external PostgreSQL) or postgresql.enabled=true" -}}
{{- end -}}
{{- end -}}

{{- define "streamspace.databaseSecretName" -}}
{{- if .Values.database.existingSecret -}}
{{- .Values.database.existingSecret -}}
{{- else -}}
{{- printf "%s-db" (include "streamspace.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "streamspace.databaseSecretKey" -}}
{{- if .Values.database.existingSecret }}{{ .Values.database.existingSecretKey }}{{ else }}password{{ end -}}
{{- end -}}

{{- define "streamspace.metricsTokenSecret" -}}
{{- default (printf "%s-metrics" (include "streamspace.fullname" .)) .Values.metrics.token.existingSecret -}}
{{- end -}}

{{- define "streamspace.metricsTokenKey" -}}
{{- if .Values.metrics.token.existingSecret }}{{ .Values.metrics.token.existingSecretKey }}{{ else }}token{{ end -}}
{{- end -}}

{{/* METRICS_TOKEN of the control plane, from its Secret (metrics.token.enabled). */}}
{{- define "streamspace.metricsTokenEnv" -}}
{{- if .Values.metrics.token.enabled -}}
- name: METRICS_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "streamspace.metricsTokenSecret" . }}
      key: {{ include "streamspace.metricsTokenKey" . }}
{{- end -}}
{{- end -}}

{{- define "streamspace.agentId" -}}
{{- default (printf "%s-k8s" (include "streamspace.fullname" .)) .Values.k8sAgent.agentId -}}
{{- end -}}

{{- define "streamspace.agentServiceAccount" -}}
{{- default (printf "%s-agent" (include "streamspace.fullname" .)) .Values.k8sAgent.serviceAccount.name -}}
{{- end -}}

{{/* Where session pods run: their own namespace unless told otherwise (see checks). */}}
{{- define "streamspace.sessionNamespace" -}}
{{- $name := default (printf "%s-sessions" .Release.Namespace) .Values.k8sAgent.config.namespace -}}
{{- if gt (len $name) 63 -}}
{{- fail (printf "the sessions' namespace %q is longer than 63 characters: set k8sAgent.config.namespace" $name) -}}
{{- end -}}
{{- $name -}}
{{- end -}}

{{/*
Values that would render a working but unsafe install fail the render, saying why and
what to set (templates/checks.yaml runs them).
*/}}
{{- define "streamspace.checks" -}}
{{- if and .Values.k8sAgent.enabled (eq (include "streamspace.sessionNamespace" .) .Release.Namespace) (not .Values.k8sAgent.allowReleaseNamespace) -}}
{{- fail (printf "k8sAgent.config.namespace is the release namespace %s: session pods would run beside the control plane's Secrets (the agent may create Deployments there, which can mount any Secret of the namespace) and its database. Leave it empty (sessions in %s-sessions) or name another namespace; set k8sAgent.allowReleaseNamespace=true only if you accept that." .Release.Namespace .Release.Namespace) -}}
{{- end -}}
{{- if and .Values.ingress.enabled (not .Values.api.trustedProxies) (not .Values.ingress.allowWithoutTrustedProxies) -}}
{{- fail "ingress.enabled needs api.trustedProxies: behind the ingress controller every client has the controller's address, so without it the login limits count all users as one client (100 failed logins a minute from anyone lock everybody out; 10 against one account lock its owner out). Set api.trustedProxies to the controller pods' addresses or network (e.g. 10.244.0.0/16), or set ingress.allowWithoutTrustedProxies=true to accept that." -}}
{{- end -}}
{{- end -}}

{{- define "streamspace.controlPlaneURL" -}}
{{- if .Values.k8sAgent.config.controlPlaneURL -}}
{{- .Values.k8sAgent.config.controlPlaneURL -}}
{{- else -}}
{{- printf "http://%s.%s.svc:%d" (include "streamspace.fullname" .) .Release.Namespace (int .Values.api.service.port) -}}
{{- end -}}
{{- end -}}

{{- define "streamspace.publicURL" -}}
{{- if .Values.api.publicURL -}}
{{- .Values.api.publicURL -}}
{{- else if .Values.ingress.enabled -}}
{{- printf "%s://%s" (ternary "https" "http" .Values.ingress.tls.enabled) .Values.ingress.host -}}
{{- else -}}
http://localhost:8080
{{- end -}}
{{- end -}}

{{/*
A secret value generated once and kept: the explicit value if given, else what the cluster
already holds (`lookup`; `_lookupOverride` stands for it in offline tests), else random.
Call with (dict "ctx" . "secret" NAME "key" KEY "value" EXPLICIT). Returns base64.
*/}}
{{- define "streamspace.keptSecret" -}}
{{- if .value -}}
{{- .value | b64enc -}}
{{- else -}}
{{- $existing := lookup "v1" "Secret" .ctx.Release.Namespace .secret -}}
{{- if not $existing -}}
{{- $existing = dict "data" (get .ctx.Values._lookupOverride .secret | default dict) -}}
{{- end -}}
{{- $data := get $existing "data" | default dict -}}
{{- if hasKey $data .key -}}
{{- get $data .key -}}
{{- else -}}
{{- randAlphaNum 48 | b64enc -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Hook annotations of the Secrets: they must exist before the migration Job runs. */}}
{{- define "streamspace.secretHook" -}}
helm.sh/hook: pre-install,pre-upgrade
helm.sh/hook-weight: "-10"
helm.sh/hook-delete-policy: before-hook-creation
helm.sh/resource-policy: keep
{{- end -}}

{{/* Environment shared by the control plane and the migration Job. */}}
{{- define "streamspace.databaseEnv" -}}
- name: DB_HOST
  value: {{ include "streamspace.databaseHost" . | quote }}
- name: DB_PORT
  value: {{ .Values.database.port | quote }}
- name: DB_NAME
  value: {{ .Values.database.name | quote }}
- name: DB_USER
  value: {{ .Values.database.user | quote }}
- name: DB_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "streamspace.databaseSecretName" . }}
      key: {{ include "streamspace.databaseSecretKey" . }}
- name: JWT_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ include "streamspace.fullname" . }}-jwt
      key: secret
{{- end -}}

{{/* The containers' security context: non-root, nothing to escalate, read-only root. */}}
{{- define "streamspace.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "streamspace.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

"""Session output on disk stays bounded (review should-fix 5) and its end stays readable."""

from __future__ import annotations

from agent.platforms.session_log import BoundedLog, tail


def test_the_log_rotates_at_its_limit_and_keeps_at_most_two_files(tmp_path):
    path = tmp_path / "app.log"
    log = BoundedLog(path, limit=1000)
    for i in range(500):
        log.write(f"line {i:04d}\n".encode())  # 10 bytes each: 5000 in all
    log.close()
    assert path.stat().st_size <= 1000 and (tmp_path / "app.log.1").stat().st_size <= 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.log", "app.log.1"]
    assert log.size_on_disk() <= 2000
    # the newest output is at the end, across the rotation
    end = tail(path, 1500).decode()
    assert end.endswith("line 0499\n") and len(end) == 1500
    assert "line 0400\n" in end


def test_a_reopened_log_counts_what_is_already_there(tmp_path):
    path = tmp_path / "xvnc.log"
    path.write_bytes(b"x" * 900)
    log = BoundedLog(path, limit=1000)
    log.write(b"y" * 200)  # would pass the limit: rotates first
    log.close()
    assert (tmp_path / "xvnc.log.1").read_bytes() == b"x" * 900
    assert path.read_bytes() == b"y" * 200
    assert tail(tmp_path / "missing.log") == b""

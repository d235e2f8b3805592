"""The ``s2sfast`` command as an operator runs it: ``python -m s2sfast ...`` in a subprocess,
checking exit codes, stdout, stderr and that no traceback ever reaches the terminal."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from certs import make_ca
from cryptography.hazmat.primitives import serialization

import s2sfast

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "mongooseim.toml"


def run(*args: str, cwd: str | os.PathLike[str] | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    result = subprocess.run(
        [sys.executable, "-m", "s2sfast", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=60,
    )
    assert "Traceback" not in result.stderr, result.stderr
    assert "Traceback" not in result.stdout, result.stdout
    return result


def write(tmp_path: Path, text: str, name: str = "mongooseim.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


VALID = """
[general]
  hosts = ["localhost", "example.com"]
  loglevel = "notice"
  language = "en"

[[listen.s2s]]
  port = 5269
  shaper = "s2s_shaper"

[[listen.c2s]]
  port = 5222

[shaper.fast]
  max_rate = 50_000

[access]
  s2s_shaper = [{acl = "all", value = "fast"}]

[s2s]
  default_policy = "deny"
  outgoing.connection_timeout = "infinity"
  host_policy = [{host = "friend.example", policy = "allow"}]

[[host_config]]
  host = "example.com"
  s2s.default_policy = "allow"
"""


def test_version():
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"s2sfast {s2sfast.__version__}"


def test_no_command_is_a_usage_error():
    result = run()
    assert result.returncode == 2
    assert "usage: s2sfast" in result.stderr


def test_help_lists_the_commands():
    result = run("--help")
    assert result.returncode == 0
    assert "check-config" in result.stdout and "run" in result.stdout


def test_check_config_without_file_is_a_usage_error():
    result = run("check-config")
    assert result.returncode == 2
    assert "FILE" in result.stderr


def test_check_config_valid_prints_a_summary(tmp_path):
    path = write(tmp_path, VALID)
    result = run("check-config", path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith(f"{path}: valid\n")
    assert "hosts: localhost, example.com; loglevel notice\n" in out
    assert "0.0.0.0:5269" in out and "fast (50000 B/s)" in out
    assert "default_policy deny" in out
    assert "host_config example.com" in out
    # the ignored sections are named once, on stderr, at info level
    info = [line for line in result.stderr.splitlines() if "ignoring" in line]
    assert len(info) == 1
    assert "listen.c2s" in info[0] and "general.language" in info[0]
    assert "loglevel" not in info[0]  # read, not ignored


def test_check_config_summary_ends_with_one_newline(tmp_path):
    for text in (VALID, '[general]\nhosts = ["a.test"]\n'):
        out = run("check-config", write(tmp_path, text)).stdout
        assert out.endswith("\n") and not out.endswith("\n\n"), repr(out[-40:])


def test_check_config_json_has_every_default_keyed_like_the_toml(tmp_path):
    result = run("check-config", write(tmp_path, VALID), "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data) == {"general", "listen", "s2s", "host_config"}
    assert data["general"] == {
        "hosts": ["localhost", "example.com"],
        "loglevel": "notice",
        "max_fsm_queue": 10_000,  # s2sfast.limits.MAX_FSM_QUEUE when not set
    }
    [lst] = data["listen"]["s2s"]
    assert lst["port"] == 5269 and lst["ip_address"] == "0.0.0.0"
    assert lst["max_stanza_size"] == "infinity" and lst["max_connections"] == "infinity"
    assert lst["shaper"] == "s2s_shaper" and lst["backlog"] == 1024
    assert lst["state_timeout"] == 5000
    s2s = data["s2s"]
    assert s2s["default_policy"] == "deny"
    assert s2s["host_policy"] == [{"host": "friend.example", "policy": "allow"}]
    assert s2s["use_starttls"] == "false" and s2s["certfile"] is None
    assert re.fullmatch(r"[0-9a-f]{20}", s2s["shared"])
    assert s2s["ciphers"] == "TLSv1.2:TLSv1.3" and s2s["max_retry_delay"] == 300
    assert s2s["outgoing"] == {
        "port": 5269,
        "ip_versions": [4, 6],
        "connection_timeout": "infinity",
    }
    assert s2s["dns"] == {"timeout": 10, "retries": 2}
    [host] = data["host_config"]
    assert host["host"] == "example.com"
    assert host["s2s"]["default_policy"] == "allow"
    # a host's s2s table replaces [s2s] (MongooseIM 6.3): unnamed options take their defaults
    assert host["s2s"]["host_policy"] == []
    assert host["s2s"]["shared"] == s2s["shared"]


def test_check_config_example(tmp_path):
    result = run("check-config", str(EXAMPLE))
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout
    data = json.loads(run("check-config", "--json", str(EXAMPLE)).stdout)
    assert data["general"] == {"hosts": ["localhost"], "loglevel": "warning", "max_fsm_queue": 1000}
    assert data["s2s"]["default_policy"] == "deny"


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        (
            '[general]\nhosts = ["a"]\n[s2s]\noutgoing.ip_versions = [4, 5]\n',
            ["s2s.outgoing.ip_versions", "got [4, 5]", "4 and/or 6"],
        ),
        (
            '[general]\nhosts = ["a"]\n[s2s]\nhost_policy = [{host = "x", policy = "allow"},'
            ' {host = "y", policy = "block"}]\n',
            ["s2s.host_policy[1].policy", '"block"', '"allow", "deny"'],
        ),
        (
            '[general]\nhosts = ["a"]\n[[listen.s2s]]\nport = 99999\n',
            ["listen.s2s[0].port", "got 99999", "1 to 65535"],
        ),
        (
            '[general]\nhosts = ["a"]\n[s2s]\nuse_starttls = "required"\n',
            ["s2s.certfile", "missing", '"required"'],
        ),
        ('[general]\nhosts = ["a"]\n\n[s2s\n', ["TOML syntax error", "line 4"]),
        ("[general]\nhosts = []\n", ["general.hosts", "got []"]),
    ],
    ids=["ip_versions", "host_policy", "port", "starttls", "syntax", "hosts"],
)
def test_check_config_invalid(tmp_path, text, fragments):
    path = write(tmp_path, text)
    result = run("check-config", path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith(f"s2sfast: invalid configuration: {path}: ")
    for fragment in fragments:
        assert fragment in result.stderr
    assert run("check-config", "--json", path).returncode == 1


def test_check_config_missing_file(tmp_path):
    result = run("check-config", str(tmp_path / "absent.toml"))
    assert result.returncode == 1
    assert "cannot read the file" in result.stderr


def test_check_config_encrypted_key(tmp_path):
    leaf = make_ca().issue(["localhost"])
    key = leaf.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"password"),
    )
    (tmp_path / "server.pem").write_bytes(leaf.cert_pem() + key)
    text = '[general]\nhosts = ["localhost"]\n[s2s]\nuse_starttls = "optional"\n'
    text += f'certfile = "{tmp_path / "server.pem"}"\n'
    result = run("check-config", write(tmp_path, text))
    assert result.returncode == 1
    assert "s2s.certfile" in result.stderr and "encrypted" in result.stderr


def test_check_config_relative_certfile_is_relative_to_the_working_directory(tmp_path):
    make_ca().issue(["localhost"]).write_pem(tmp_path, "server.pem")
    text = '[general]\nhosts = ["localhost"]\n[s2s]\nuse_starttls = "optional"\n'
    text += 'certfile = "server.pem"\n'
    path = write(tmp_path, text)
    assert run("check-config", path, cwd=tmp_path).returncode == 0
    assert run("check-config", path, cwd=ROOT).returncode == 1


def test_check_config_works_where_the_framer_is_not_built():
    # the node needs the compiled framer; checking a configuration must not
    code = (
        "import sys; sys.modules['s2sfast._framer'] = None\n"
        "from s2sfast.server.cli import main\n"
        f"raise SystemExit(main(['check-config', {str(EXAMPLE)!r}]))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout
    assert "Traceback" not in result.stderr

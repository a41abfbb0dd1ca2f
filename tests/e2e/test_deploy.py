"""What deploy/ ships agrees with itself and with the real binary: the config
files load, the systemd unit and the Kubernetes manifests name the same
socket, paths, groups and memory as those configs, the probes are the
binary's health command, and the example trainer runs. (The tools that check
each file on its own run in deploy/dev/check-deploy.sh.)"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

from loaderd.testing import Daemon

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
GiB = 1 << 30
UNITS = {
    "Ki": 1 << 10,
    "Mi": 1 << 20,
    "Gi": 1 << 30,
    "Ti": 1 << 40,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
}


def quantity(q: str) -> int:
    """Bytes of a Kubernetes quantity (8Gi), a systemd size (12G: GiB to systemd, the
    stricter 10^9 here) or a loaderd size (5GiB)."""
    m = re.fullmatch(r"(\d+)([KMGT]i?)?B?", q)
    assert m, f"not a size: {q}"
    return int(m[1]) * UNITS.get(m[2] or "", 1)


def effective(binary: str, config: Path) -> dict[str, Any]:
    """The configuration the real binary makes of a config file."""
    p = subprocess.run(
        [binary, "serve", "--config", str(config), "--print-config"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert p.returncode == 0, f"{config}: {p.stderr}"
    cfg: dict[str, Any] = yaml.safe_load(p.stdout)
    return cfg


def memory_needed(cfg: dict[str, Any]) -> int:
    """The memory a config asks for (memory-bytes bounds the daemon, the cache
    included), plus a GiB of margin."""
    assert quantity(str(cfg["cache-bytes"])) < quantity(str(cfg["memory-bytes"]))
    return quantity(str(cfg["memory-bytes"])) + GiB


def unit(path: Path) -> dict[str, list[str]]:
    """A systemd unit's settings; repeated keys keep every value."""
    out: dict[str, list[str]] = defaultdict(list)
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            k, v = line.split("=", 1)
            out[k.strip()].append(v.strip())
    return out


def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for f in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(f.read_text()):
            out[(doc["kind"], doc["metadata"]["name"])] = doc
    return out


def test_systemd_unit_and_its_config(binary: str) -> None:
    u = unit(DEPLOY / "systemd" / "loaderd.service")
    assert u["ExecStart"] == ["/usr/local/bin/loaderd serve --config /etc/loaderd/loaderd.yaml"]
    # The config loads (data roots and groups are the node's: not checked here).
    cfg = effective(binary, DEPLOY / "systemd" / "loaderd.yaml")
    assert (u["Type"], u["User"], u["Group"]) == (["notify"], ["loaderd"], ["loaderd"])
    assert cfg["socket"] == f"/run/{u['RuntimeDirectory'][0]}/loaderd.sock"
    assert u["RuntimeDirectoryMode"] == ["0750"]
    assert u["Group"][0] in cfg["allow-gid"], "the socket's group must pass the peer check"
    read_only = " ".join(u["ReadOnlyPaths"]).split()
    for root in cfg["data-root"]:
        assert root in read_only, f"data root {root} is not in ReadOnlyPaths="
    assert quantity(u["MemoryMax"][0]) >= memory_needed(cfg)
    assert u["WatchdogSec"] and u["NotifyAccess"] == ["main"]
    for k, v in {"ProtectSystem": "strict", "NoNewPrivileges": "yes", "PrivateTmp": "yes"}.items():
        assert u[k] == [v], k
    sysusers = (DEPLOY / "systemd" / "loaderd.sysusers").read_text()
    assert re.search(r"^u loaderd -:loaderd ", sysusers, re.M) and re.search(r"^g loaderd ", sysusers, re.M)


def test_daemonset_trainer_job_and_config_agree(binary: str, tmp_path: Path) -> None:
    m = manifests()
    cm = m[("ConfigMap", "loaderd")]
    config = tmp_path / "loaderd.yaml"
    config.write_text(cm["data"]["loaderd.yaml"])
    cfg = effective(binary, config)

    pod = m[("DaemonSet", "loaderd")]["spec"]["template"]
    spec = pod["spec"]
    (c,) = spec["containers"]
    (init,) = spec["initContainers"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {v["mountPath"]: v for v in c["volumeMounts"]}
    assert c["args"] == ["serve", "--config", "/etc/loaderd/loaderd.yaml"]
    assert volumes[mounts["/etc/loaderd"]["name"]]["configMap"]["name"] == "loaderd"
    # The socket's directory is the node's, shared through a hostPath.
    sock_dir = os.path.dirname(cfg["socket"])
    run = volumes[mounts[sock_dir]["name"]]
    assert run["hostPath"]["path"] == sock_dir
    # Data roots are mounted, read-only.
    for root in cfg["data-root"]:
        assert mounts[root].get("readOnly") is True, root
    # The init container hands the directory to the daemon's user and group.
    sc = spec["securityContext"]
    assert init["image"] == c["image"]
    assert init["command"][-1] == sock_dir and init["volumeMounts"][0]["mountPath"] == sock_dir
    assert ["-o", str(sc["runAsUser"]), "-g", str(sc["runAsGroup"])] == init["command"][4:8]
    assert str(sc["runAsGroup"]) in cfg["allow-gid"]
    # Memory: reserved (requests = limits) and enough for the config.
    res = c["resources"]
    assert res["requests"]["memory"] == res["limits"]["memory"]
    limit = quantity(res["limits"]["memory"])
    assert limit >= memory_needed(cfg)
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert memory_needed(cfg) - GiB < quantity(env["GOMEMLIMIT"]) < limit
    # Prometheus scrapes the metrics port.
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == ports["metrics"]
    if "metrics-addr" in cfg:
        assert cfg["metrics-addr"].rsplit(":", 1)[1] == str(ports["metrics"])
    # Probes are the binary's health command on the configured socket.
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        cmd = c[probe]["exec"]["command"]
        assert cmd[:4] == ["loaderd", "health", "--config", "/etc/loaderd/loaderd.yaml"], probe

    # The trainer Job reaches the same socket and passes the peer check.
    job = m[("Job", "train-example")]["spec"]["template"]["spec"]
    (t,) = job["containers"]
    tenv = {e["name"]: e for e in t["env"]}
    assert tenv["LOADERD_SOCKET"]["value"] == cfg["socket"]
    tvol = {v["name"]: v for v in job["volumes"]}
    tmount = next(v for v in t["volumeMounts"] if v["mountPath"] == sock_dir)
    assert tvol[tmount["name"]]["hostPath"]["path"] == sock_dir
    assert str(job["securityContext"]["runAsGroup"]) in cfg["allow-gid"]
    assert tenv["WORLD_SIZE"]["value"] == str(m[("Job", "train-example")]["spec"]["completions"])


def test_probe_commands_answer_for_a_live_daemon(binary: str, tmp_path: Path) -> None:
    """Run the DaemonSet's probe commands, as the kubelet would, against a
    daemon started from the ConfigMap's config (socket and root moved here)."""
    m = manifests()
    text = m[("ConfigMap", "loaderd")]["data"]["loaderd.yaml"]
    sock = str(tmp_path / "run" / "loaderd.sock")
    text = text.replace("/run/loaderd/loaderd.sock", sock).replace("- /data", f"- {tmp_path}")
    config = tmp_path / "loaderd.yaml"
    config.write_text(text)
    (c,) = m[("DaemonSet", "loaderd")]["spec"]["template"]["spec"]["containers"]
    probes = [c[p]["exec"]["command"] for p in ("startupProbe", "readinessProbe", "livenessProbe")]

    def probe(cmd: list[str]) -> subprocess.CompletedProcess[str]:
        cmd = [binary, *[str(config) if a == "/etc/loaderd/loaderd.yaml" else a for a in cmd[1:]]]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30)

    for cmd in probes:  # no daemon yet: every probe fails
        assert probe(cmd).returncode != 0
    d = Daemon([], binary=binary, socket=sock, extra_args=["--config", str(config)])
    with d:
        for cmd in probes:
            p = probe(cmd)
            assert (p.returncode, p.stdout) == (0, "SERVING\n"), p.stderr
    assert probe(probes[0]).returncode != 0


def test_example_trainer_runs(binary: str, daemon: Daemon, gen_dir: Path, tmp_path: Path) -> None:
    """The trainer Job's script, run as two ranks against a real daemon."""
    script = tmp_path / "train.py"
    script.write_text(manifests()[("ConfigMap", "train-example")]["data"]["train.py"])
    total = 0
    for rank in range(2):
        env = {
            **os.environ,
            "RANK": str(rank),
            "WORLD_SIZE": "2",
            "LOADERD_SOCKET": daemon.socket,
            "DATASET": str(gen_dir / "part-0.parquet"),
            "EPOCHS": "1",
        }
        p = subprocess.run(
            [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120
        )
        assert p.returncode == 0, p.stderr
        m = re.fullmatch(rf"rank {rank}/2 epoch 0: (\d+) rows, plan [0-9a-f]{{32}}\n", p.stdout)
        assert m, p.stdout
        total += int(m[1])
    assert total == 10_008  # 10,007 rows, one padding sample in even mode

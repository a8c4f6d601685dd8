"""Starting and stopping Flower processes: a SuperLink, SuperNodes bound to partitions, ``flwr run``.

Process management only (the apps are federation/deploy/flower_app.py). ``LocalFederation`` runs a whole
federation on this machine (the integration test, ``fedrec flower local``, the benchmark); the
``*_command`` functions build the command lines ``fedrec flower superlink|supernode`` run on real
machines. Every process is started in its own process group and the whole group is stopped on exit,
even when the caller fails, so no SuperLink, SuperNode or app process outlives it.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from recsys.errors import FedrecError

log = logging.getLogger(__name__)
APP_DIR = Path(__file__).resolve().parents[2]      # the Flower app: pyproject.toml [tool.flwr.app]


@dataclass
class TLSFiles:
    ca_cert: Path           # clients verify the SuperLink with this
    server_cert: Path
    server_key: Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bin(name: str) -> str:
    """A Flower executable from this interpreter's environment (then PATH)."""
    cand = Path(sys.executable).parent / name
    found = str(cand) if cand.exists() else shutil.which(name)
    if not found:
        raise FedrecError(f"{name} not found: install Flower (pip install 'fedrec[full]')")
    return found


def superlink_command(port: int, host: str = "127.0.0.1", tls: TLSFiles | None = None,
                      node_auth: bool = False, database: str | None = None) -> list[str]:
    cmd = [_bin("flower-superlink"), "--host", host, "--port", str(port), "--disable-runtime-dependency-installation"]
    if tls:
        cmd += ["--ssl-ca-certfile", str(tls.ca_cert), "--ssl-certfile", str(tls.server_cert),
                "--ssl-keyfile", str(tls.server_key)]
    else:
        cmd += ["--insecure"]
    if node_auth:
        cmd += ["--enable-supernode-auth"]
    if database:
        cmd += ["--database", database]
    return cmd


def supernode_command(superlink: str, partition: int, partitions: int, runtime_port: int,
                      state_dir: str | Path | None = None, data_path: str | Path | None = None,
                      root_cert: Path | None = None, auth_key: Path | None = None) -> list[str]:
    cfg = f"partition-id={partition} num-partitions={partitions}"
    if state_dir:
        cfg += f' state-dir="{state_dir}"'
    if data_path:
        cfg += f' data-path="{data_path}"'
    cmd = [_bin("flower-supernode"), "--superlink", superlink, "--port", str(runtime_port), "--node-config", cfg]
    cmd += ["--root-certificates", str(root_cert)] if root_cert else ["--insecure"]
    if auth_key:
        cmd += ["--auth-supernode-private-key", str(auth_key)]
    return cmd


def write_connection(flwr_home: Path, name: str, address: str, root_cert: Path | None = None) -> None:
    """The Flower CLI's connection profile ($FLWR_HOME/config.toml) for ``flwr run . NAME``."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    lines = ["[superlink]", f'default = "{name}"', "", f"[superlink.{name}]", f'address = "{address}"']
    lines += [f'root-certificates = "{root_cert}"'] if root_cert else ["insecure = true"]
    (flwr_home / "config.toml").write_text("\n".join(lines) + "\n")


def run_config_arg(values: dict) -> str:
    def fmt(v):
        return f'"{v}"' if isinstance(v, (str, Path)) else str(v).lower() if isinstance(v, bool) else str(v)
    return " ".join(f"{k}={fmt(v)}" for k, v in values.items())


def descendants(pid: int) -> list[int]:
    """Process ids started (directly or not) by ``pid``, including detached ones such as the
    SuperExec Flower starts in its own session."""
    import psutil

    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def alive(pids: list[int]) -> list[int]:
    """The ids in ``pids`` that still run (zombies waiting for a reaper do not count)."""
    import psutil

    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


def _stop_group(p: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the process group of ``p`` (and every descendant, some live in other sessions), wait
    ``grace`` seconds, then SIGKILL what is left."""
    kids = descendants(p.pid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(p.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        for pid in alive(kids):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        if sig == signal.SIGTERM:
            t0 = time.monotonic()
            while (p.poll() is None or alive(kids)) and time.monotonic() - t0 < grace:
                time.sleep(0.1)
    try:
        p.wait(5)
    except subprocess.TimeoutExpired:
        log.warning("process %d did not exit after SIGKILL", p.pid)


@dataclass
class LocalFederation:
    """A SuperLink and ``n_nodes`` SuperNodes on 127.0.0.1 (free ports), logs and state under ``root``."""
    root: Path
    n_nodes: int
    data_path: Path | None = None
    tls: TLSFiles | None = None
    node_keys: list[Path] | None = None           # private keys of registered SuperNodes (node auth)
    env: dict[str, str] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def __post_init__(self):
        self.root = Path(self.root)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.flwr_home = self.root / "flwr-home"
        self.logs = self.root / "logs"

    def _env(self, extra: dict | None = None) -> dict:
        # Flower spawns flower-superexec / flwr-serverapp / flwr-clientapp by name: this env's first.
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        return {**os.environ, "PATH": path, "FLWR_HOME": str(self.flwr_home), "PYTHONUNBUFFERED": "1",
                **self.env, **(extra or {})}

    def _start(self, name: str, cmd: list[str], extra_env: dict | None = None) -> subprocess.Popen:
        self.logs.mkdir(parents=True, exist_ok=True)
        out = open(self.logs / f"{name}.log", "ab")
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=self.root, env=self._env(extra_env),
                             start_new_session=True)
        out.close()
        self.procs[name] = p
        return p

    def start_superlink(self, node_auth: bool = False) -> None:
        write_connection(self.flwr_home, "fedrec-local", self.address, self.tls.ca_cert if self.tls else None)
        self._start("superlink", superlink_command(self.port, tls=self.tls, node_auth=node_auth))
        t0 = time.monotonic()
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if self.procs["superlink"].poll() is not None or time.monotonic() - t0 > 60:
                raise FedrecError(f"SuperLink did not start; see {self.logs / 'superlink.log'}")
            time.sleep(0.3)

    def register_node(self, public_key: Path) -> None:
        """``flwr supernode register``: allow a SuperNode's key on an auth-enabled SuperLink."""
        r = subprocess.run([_bin("flwr"), "supernode", "register", str(public_key), "fedrec-local"], cwd=self.root,
                           env=self._env(), capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise FedrecError(f"flwr supernode register failed: {(r.stdout + r.stderr).strip()[-300:]}")

    def start_node(self, i: int, extra_env: dict | None = None) -> None:
        cmd = supernode_command(self.address, i, self.n_nodes, free_port(), self.root / "nodes" / f"p{i}",
                                self.data_path, self.tls.ca_cert if self.tls else None,
                                self.node_keys[i] if self.node_keys else None)
        self._start(f"supernode-{i}", cmd, extra_env)

    def stop_node(self, i: int) -> None:
        p = self.procs.pop(f"supernode-{i}", None)
        if p:
            _stop_group(p, grace=2.0)

    def run(self, run_config: dict, timeout: float = 600) -> subprocess.CompletedProcess:
        """``flwr run`` of this repository's app on the federation; returns when the run ends."""
        cmd = [_bin("flwr"), "run", str(APP_DIR), "fedrec-local", "--stream", "-c", run_config_arg(run_config)]
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.logs / "flwr-run.log", "ab") as out:
            p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=self.root, env=self._env(),
                                 start_new_session=True)
            try:
                rc = p.wait(timeout)
            except subprocess.TimeoutExpired:
                _stop_group(p)
                raise FedrecError(f"flwr run did not finish within {timeout:.0f} s; see {self.logs}") from None
        return subprocess.CompletedProcess(cmd, rc)

    def all_pids(self) -> list[int]:
        """Every process this federation started, with their descendants (for leak checks)."""
        return [q for p in self.procs.values() for q in (p.pid, *descendants(p.pid))]

    def stop(self) -> None:
        for name in list(self.procs):
            _stop_group(self.procs.pop(name))

    def __enter__(self) -> "LocalFederation":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def make_certificates(out: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost"), days: int = 30) -> TLSFiles:
    """A throw-away CA and a SuperLink certificate for ``hosts`` (for local tests and trials; use your
    organisation's PKI in production)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    out.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedrec test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP384R1())
    sans = [x509.IPAddress(ipaddress.ip_address(h)) if h.replace(".", "").isdigit() else x509.DNSName(h) for h in hosts]
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False).sign(ca_key, hashes.SHA256()))
    files = TLSFiles(out / "ca.crt", out / "server.crt", out / "server.key")
    files.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.server_key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
    os.chmod(files.server_key, 0o600)
    return files


def make_node_key(out: Path, name: str) -> tuple[Path, Path]:
    """An EC P-384 key pair for SuperNode authentication (OpenSSH format, as Flower expects):
    register the public key with ``flwr supernode register``, give the private key to the node."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    out.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    priv, pub = out / f"{name}.key", out / f"{name}.pub"
    priv.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                       serialization.NoEncryption()))
    os.chmod(priv, 0o600)
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))
    return priv, pub

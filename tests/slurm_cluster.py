"""A real single-node Slurm on localhost for integration tests (installs it with apt when root).

Everything lives under one fixed folder (``$TMPDIR/hypersparse-slurm``): a private munge key
and socket, a generated ``slurm.conf``, spool/state dirs, logs and pid files. Ports are picked
free at start. Daemons left over by an interrupted earlier run are found through their pid
files and stopped first.

Clients find the cluster through ``SLURM_CONF`` (see :meth:`SlurmCluster.env`), but the
snakemake slurm-jobstep plugin (0.6.1) strips every ``SLURM_*`` variable before its nested
``srun`` inside a job, so that ``srun`` only finds the default ``/etc/slurm/slurm.conf``. We
therefore symlink that path to our config while the cluster runs (and remove the link on
stop); where a real ``/etc/slurm/slurm.conf`` exists we refuse rather than overwrite it.

Use from pytest through the ``slurm`` fixture (import ``slurm_fixture`` into the test module),
or by hand: ``python tests/slurm_cluster.py up`` / ``down``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

BASE = Path(tempfile.gettempdir()) / "hypersparse-slurm"
SYSTEM_CONF = Path("/etc/slurm/slurm.conf")  # compiled-in default path of Debian's Slurm
PARTITION = "debug"
DAEMONS = ("slurmd", "slurmctld", "munged")  # stop order: compute node first, auth last
NEEDED = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol", "scancel")
APT_PACKAGES = ("slurm-wlm", "munge")


class SlurmUnavailable(RuntimeError):
    """Slurm is missing and cannot be installed here (not root, no apt-get, apt failed)."""


def ensure_installed(timeout: float = 900) -> None:
    """Install slurm-wlm + munge with apt-get when any daemon/client is missing."""
    if os.geteuid() != 0:
        raise SlurmUnavailable("not root: slurmd must run as root (and apt-get needs root)")
    missing = [tool for tool in NEEDED if not _which(tool)]
    if not missing:
        return
    if not shutil.which("apt-get"):
        raise SlurmUnavailable(f"Slurm tools missing ({', '.join(missing)}) and no apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (
        ["apt-get", "update", "-q"],
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *APT_PACKAGES],
    ):
        try:
            proc = subprocess.run(
                cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as err:
            raise SlurmUnavailable(f"{' '.join(cmd)} timed out after {timeout} s") from err
        if proc.returncode != 0:
            raise SlurmUnavailable(f"{' '.join(cmd)} failed: {proc.stderr.strip()[-500:]}")
    still = [tool for tool in NEEDED if not _which(tool)]
    if still:
        raise SlurmUnavailable(f"apt-get installed {APT_PACKAGES} but {still} still missing")


@dataclass
class SlurmCluster:
    """Handle on a running local cluster: where it lives and how clients reach it."""

    root: Path
    node: str
    partition: str = PARTITION

    @property
    def conf(self) -> Path:
        """Path of the generated slurm.conf."""
        return self.root / "slurm.conf"

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """Environment for Slurm clients (sbatch, squeue, snakemake): points at our slurm.conf."""
        env = dict(os.environ if base is None else base)
        env["SLURM_CONF"] = str(self.conf)
        return env

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a Slurm client command against this cluster."""
        return subprocess.run(
            list(cmd), env=self.env(), capture_output=True, text=True, timeout=30, check=check
        )

    def node_state(self) -> str:
        """State of our node as sinfo reports it ('idle', 'mix', 'down*', ...; '' if unknown)."""
        proc = self.run("sinfo", "-h", "-N", "-n", self.node, "-o", "%t", check=False)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    def logs(self, lines: int = 30) -> str:
        """Tail of every daemon log, for error messages."""
        parts = []
        for name in DAEMONS:
            log = self.root / f"{name}.log"
            if log.exists():
                tail = log.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {log} ---\n" + "\n".join(tail))
        return "\n".join(parts)

    def stop(self) -> None:
        """Cancel all jobs, then stop slurmd, slurmctld and munged (idempotent)."""
        if (self.root / "slurmctld.pid").exists():
            self.run("scancel", "--full", "--user", _user(), check=False)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                proc = self.run("squeue", "-h", "-o", "%i", check=False)
                if proc.returncode != 0 or not proc.stdout.strip():
                    break
                time.sleep(0.5)
        stop_daemons(self.root)
        release_system_conf(self.conf)


def claim_system_conf(conf: Path) -> None:
    """Point /etc/slurm/slurm.conf at `conf` (see module docstring); refuse a real one."""
    if SYSTEM_CONF.is_symlink() and Path(os.readlink(SYSTEM_CONF)) == conf:
        return
    if SYSTEM_CONF.exists() or SYSTEM_CONF.is_symlink():
        raise SlurmUnavailable(
            f"{SYSTEM_CONF} exists (a system Slurm?); not replacing it with the test cluster's"
        )
    SYSTEM_CONF.parent.mkdir(parents=True, exist_ok=True)
    SYSTEM_CONF.symlink_to(conf)


def release_system_conf(conf: Path) -> None:
    """Remove /etc/slurm/slurm.conf if it is our symlink to `conf`."""
    if SYSTEM_CONF.is_symlink() and Path(os.readlink(SYSTEM_CONF)) == conf:
        SYSTEM_CONF.unlink()


def _which(tool: str) -> str | None:
    """shutil.which that also looks in the sbin dirs (root's PATH may lack them)."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    return shutil.which(tool, path=path)


def _user() -> str:
    """Name of the current user (jobs are submitted as this user)."""
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


def _pid_alive(pid: int, name: str) -> bool:
    """True if `pid` runs and its command name is `name` (guards against reused pids)."""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return False
    return comm == name[:15]


def _our_pids(root: Path) -> dict[int, str]:
    """pid -> daemon name of every daemon started for `root`: pid files, plus a /proc scan.

    The scan finds daemons whose pid file is gone (e.g. the temp dir was wiped): ours carry
    ``SLURM_CONF=<root>/slurm.conf`` in their environment (munged: `root` on its command line).
    """
    pids: dict[int, str] = {}
    for name in DAEMONS:
        try:
            pids[int((root / f"{name}.pid").read_text().split()[0])] = name
        except (OSError, ValueError, IndexError):
            pass
    marker = str(root / "slurm.conf").encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            comm = (proc / "comm").read_text().strip()
            if comm not in DAEMONS:
                continue
            found = marker in (proc / "environ").read_bytes() or (
                str(root).encode() in (proc / "cmdline").read_bytes()
            )
        except OSError:
            continue
        if found:
            pids[int(proc.name)] = comm
    return pids


def stop_daemons(root: Path, timeout: float = 15) -> None:
    """Stop the daemons started for `root` (TERM, then KILL after `timeout`), slurmd first."""
    pids = _our_pids(root)
    for name in DAEMONS:
        for pid in [p for p, n in pids.items() if n == name]:
            if _pid_alive(pid, name):
                os.kill(pid, signal.SIGTERM)
                deadline = time.monotonic() + timeout
                while _pid_alive(pid, name) and time.monotonic() < deadline:
                    time.sleep(0.1)
                if _pid_alive(pid, name):
                    os.kill(pid, signal.SIGKILL)
        (root / f"{name}.pid").unlink(missing_ok=True)


def _free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


def _node_hardware() -> tuple[str, int, int]:
    """(hostname slurmd will use, CPUs, MB of memory) as `slurmd -C` detects them."""
    out = subprocess.run(
        [_which("slurmd") or "slurmd", "-C"], capture_output=True, text=True, check=True
    ).stdout
    fields = dict(tok.split("=", 1) for tok in out.split() if "=" in tok)
    return fields["NodeName"], int(fields["CPUs"]), int(fields["RealMemory"])


def write_config(root: Path, node: str, cpus: int, mem_mb: int) -> Path:
    """Write a minimal single-node slurm.conf (no accounting, no cgroups) into `root`."""
    conf = f"""\
ClusterName=hypersparse
SlurmctldHost=localhost
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root / "munge.socket"}
StateSaveLocation={root / "state"}
SlurmdSpoolDir={root / "spool"}
SlurmctldPidFile={root / "slurmctld.pid"}
SlurmdPidFile={root / "slurmd.pid"}
SlurmctldLogFile={root / "slurmctld.log"}
SlurmdLogFile={root / "slurmd.log"}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
# squeue is the status source (no sacct): keep finished jobs visible for 5 min.
MinJobAge=300
SchedulerParameters=sched_interval=1
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN
PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""
    path = root / "slurm.conf"
    path.write_text(conf)
    return path


def start(root: Path = BASE, timeout: float = 60) -> SlurmCluster:
    """Install if needed, (re)start munged + slurmctld + slurmd under `root`, wait for idle."""
    ensure_installed()
    root.mkdir(parents=True, exist_ok=True)
    stop_daemons(root)  # leftovers of an interrupted earlier run
    for sub in ("state", "spool"):
        shutil.rmtree(root / sub, ignore_errors=True)
        (root / sub).mkdir()
    os.chmod(root, 0o755)  # munged refuses sockets in group/world-writable dirs

    key = root / "munge.key"
    key.write_bytes(os.urandom(1024))
    os.chmod(key, 0o600)
    node, cpus, mem_mb = _node_hardware()
    write_config(root, node, cpus, int(mem_mb * 0.9))
    cluster = SlurmCluster(root=root, node=node)
    claim_system_conf(cluster.conf)
    env = cluster.env()

    commands = {
        "munged": [
            "munged",
            "--force",
            f"--socket={root / 'munge.socket'}",
            f"--key-file={key}",
            f"--pid-file={root / 'munged.pid'}",
            f"--log-file={root / 'munged.log'}",
            f"--seed-file={root / 'munged.seed'}",
        ],
        # -i: ignore saved state; -c: clear job state (fresh cluster each time)
        "slurmctld": ["slurmctld", "-i", "-c"],
        "slurmd": ["slurmd", "-N", node],
    }
    try:
        for name, cmd in commands.items():
            cmd[0] = _which(cmd[0]) or cmd[0]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30)
            if proc.returncode != 0:
                raise RuntimeError(f"{name} failed to start: {proc.stderr.strip()}")
            _wait_for(lambda n=name: (root / f"{n}.pid").exists(), 10, f"{name} pid file")
        _wait_for(lambda: cluster.node_state() == "idle", timeout, "node idle in sinfo")
    except BaseException as err:
        logs = cluster.logs()
        cluster.stop()
        if isinstance(err, Exception):
            raise RuntimeError(f"local Slurm did not come up: {err}\n{logs}") from err
        raise
    return cluster


def _wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `cond()` every 0.2 s until true; TimeoutError naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture(scope="session", name="slurm")
def slurm_fixture() -> Iterator[SlurmCluster]:
    """Session-wide local Slurm; skips, with the reason, only where none can be run here.

    That is: not root, no apt-get, apt-get failed, or a real /etc/slurm/slurm.conf exists.
    """
    try:
        cluster = start()
    except SlurmUnavailable as err:
        pytest.skip(f"local Slurm unavailable: {err}")
    try:
        yield cluster
    finally:
        cluster.stop()


def main(argv: list[str]) -> int:
    """`up`: start the cluster and print the SLURM_CONF export; `down`: stop it."""
    if argv[1:] == ["up"]:
        cluster = start()
        print(f"export SLURM_CONF={cluster.conf}  # node {cluster.node}, partition {PARTITION}")
        return 0
    if argv[1:] == ["down"]:
        SlurmCluster(root=BASE, node="").stop()
        return 0
    print("usage: python tests/slurm_cluster.py up|down", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""deploy/install.sh in a temporary root: what it installs and where, with the dependency versions of
constraints.txt (and that the test venv has exactly those), that a second run changes nothing but the
program, that it never overwrites the operator's configuration, that --uninstall
keeps configuration, secrets and state unless --purge, and that the units it installs pass
`systemd-analyze verify` against the installed program.

The package is installed from a wheel built once from this checkout, with `--no-deps` (no index, so
the test stays fast and offline); the installed command then runs with the test environment's
dependencies on PYTHONPATH, which proves the package and its entry point landed in the new venv.
The venv is made from a system interpreter (/usr/bin/python3): the service cannot see one under a
home directory or /tmp (ProtectHome=yes, PrivateTmp=yes), and install.sh refuses or replaces those.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.servers import require

REPO = Path(__file__).resolve().parent.parent
INSTALL = REPO / "deploy" / "install.sh"
PREFIX = "/opt/iot-collector"
UNITS = ("iot-collector.service", "iot-collector@.service")
HIDDEN = ("/home/", "/root/", "/run/user/", "/tmp/", "/var/tmp/")


def system_python() -> str:
    """A Python 3.11+ outside the directories the service cannot see, able to make a venv."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if not os.access(candidate, os.X_OK) or os.path.realpath(candidate).startswith(HIDDEN):
            continue
        ok = subprocess.run([candidate, "-c", "import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))"],
                            capture_output=True)
        if ok.returncode == 0:
            return candidate
    pytest.skip("no system Python 3.11+ with venv in /usr/bin or /usr/local/bin (apt-get install python3-venv)")


def run(*args: str | Path, env: dict[str, str] | None = None, cwd: Path | None = None,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env, cwd=cwd, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def tree(root: Path) -> dict[str, str]:
    """Every file and link under root (bytecode caches aside) -> its content hash or link target."""
    out: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        if "__pycache__" in path.parts:
            continue
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = "-> " + os.readlink(path)
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def build_wheel(work: Path) -> Path:
    """A wheel of this checkout, built from a copy so the work tree gets no build/ or egg-info."""
    src = work / "src"
    src.mkdir()
    shutil.copy(REPO / "pyproject.toml", src)
    shutil.copy(REPO / "README.md", src)
    shutil.copytree(REPO / "collector", src / "collector", ignore=shutil.ignore_patterns("__pycache__"))
    run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--disable-pip-version-check",
        "-w", work / "dist", src)
    (found,) = (work / "dist").glob("iot_collector-*.whl")
    return found


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


@dataclass
class Installed:
    root: Path
    wheel: Path
    first: subprocess.CompletedProcess[str]
    second: subprocess.CompletedProcess[str]
    before: dict[str, str]
    after: dict[str, str]


def install(root: Path, wheel: Path, *extra: str, python: str | None = None,
            env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    chosen = ["--python", python or system_python()] if python != "" else []
    return run("bash", INSTALL, "--root", root, "--source", wheel, *chosen,
               "--pip-arg=--no-deps", "--pip-arg=--no-index", *extra, env=env, check=check)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Installed:
    """install.sh run twice into the same root; the operator edits the config in between."""
    root = tmp_path_factory.mktemp("root")
    first = install(root, wheel)
    before = tree(root)
    config = root / "etc/iot-collector/collector.yaml"
    config.write_text(config.read_text().replace("app_id: CHANGE-ME", "app_id: my-app"))
    second = install(root, wheel)
    after = tree(root)
    return Installed(root, wheel, first, second, before, after)


def test_install_puts_program_config_and_units_in_their_places(installed: Installed) -> None:
    root = installed.root
    venv = root / PREFIX.lstrip("/") / "venv"
    assert (venv / "bin/python").exists()
    assert os.access(venv / "bin/iot-collector", os.X_OK)
    for unit in UNITS:
        assert (root / "etc/systemd/system" / unit).read_bytes() == (REPO / "deploy/systemd" / unit).read_bytes()
    assert (root / "etc/iot-collector/collector.yaml").is_file()
    share = root / PREFIX.lstrip("/") / "share"
    assert (share / "collector.yaml.example").read_bytes() == (REPO / "deploy/collector.yaml").read_bytes()
    for rel in ("prometheus/iot-collector.rules.yml", "prometheus/prometheus.yml", "alertmanager/alertmanager.yml"):
        assert (share / rel).read_bytes() == (REPO / "deploy" / rel).read_bytes(), rel
    for dashboard in (REPO / "grafana").rglob("*.json"):
        assert (share / "grafana" / dashboard.relative_to(REPO / "grafana")).is_file(), dashboard
    assert (share / "doc/operations.md").is_file()
    credstore = root / "etc/credstore"
    assert credstore.is_dir() and (credstore.stat().st_mode & 0o777) == 0o700
    # Nothing was written outside these.
    top = {p.relative_to(root).parts[0] for p in root.rglob("*")}
    assert top <= {"opt", "etc"}, top


def test_installed_scripts_run_from_the_target_path_not_the_staging_root(installed: Installed) -> None:
    venv = installed.root / PREFIX.lstrip("/") / "venv"
    assert (venv / "bin/iot-collector").read_text().splitlines()[0] == f"#!{PREFIX}/venv/bin/python"
    leaked = [p for p in (venv / "bin").iterdir()
              if p.is_file() and not p.is_symlink() and str(installed.root).encode() in p.read_bytes()]
    assert not leaked, f"scripts still name the staging root: {leaked}"


def test_installed_package_runs_check_config_on_the_installed_config(installed: Installed,
                                                                     tmp_path: Path) -> None:
    venv = installed.root / PREFIX.lstrip("/") / "venv"
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "iot-collector.app_secret").write_text("not-a-real-secret\n")
    # The dependencies come from the test environment (installed with --no-deps); the package itself
    # must come from the new venv.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": sysconfig.get_paths()["purelib"],
           "CREDENTIALS_DIRECTORY": str(creds), "STATE_DIRECTORY": str(tmp_path / "state"),
           "IOT_COLLECTOR_SHARD_INDEX": "0"}
    # Run outside the checkout, whose collector/ would otherwise shadow the installed one.
    where = run(venv / "bin/python", "-c", "import collector; print(collector.__file__)", env=env, cwd=tmp_path)
    assert where.stdout.strip().startswith(str(venv)), where.stdout
    proc = run(venv / "bin/python", venv / "bin/iot-collector", "check-config", "-c",
               installed.root / "etc/iot-collector/collector.yaml", env=env, cwd=tmp_path, check=False)
    assert proc.returncode == 0, f"check-config failed:\n{proc.stdout}\n{proc.stderr}"


def test_second_run_is_idempotent_and_keeps_the_operators_config(installed: Installed) -> None:
    config = "etc/iot-collector/collector.yaml"
    assert "app_id: my-app" in (installed.root / config).read_text()
    assert "kept your /etc/iot-collector/collector.yaml" in installed.second.stdout
    changed = {k for k in installed.before.keys() | installed.after.keys()
               if installed.before.get(k) != installed.after.get(k)}
    assert changed == {config}, f"a second install changed more than the edited config: {sorted(changed)}"
    # Both runs end with the next steps.
    for proc in (installed.first, installed.second):
        assert "Next steps:" in proc.stdout
        assert "systemctl enable --now iot-collector.service" in proc.stdout


def test_uninstall_keeps_config_secrets_and_state_unless_purged(installed: Installed, tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(installed.root, root, symlinks=True)
    # What systemd and the operator add after the install: enabled units, a secret, the state.
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True)
    (wants / "iot-collector.service").symlink_to("/etc/systemd/system/iot-collector.service")
    (wants / "iot-collector@1.service").symlink_to("/etc/systemd/system/iot-collector@.service")
    (root / "etc/credstore/iot-collector.app_secret").write_text("s3cret\n")
    state = root / "var/lib/private/iot-collector"
    (state / "spool").mkdir(parents=True)
    (state / "alerts.json").write_text("{}")
    (root / "var/lib/iot-collector").symlink_to("private/iot-collector")
    (root / "etc/credstore/other-service.token").write_text("theirs\n")

    proc = run("bash", INSTALL, "--root", root, "--uninstall")
    assert not (root / PREFIX.lstrip("/")).exists()
    for unit in UNITS:
        assert not (root / "etc/systemd/system" / unit).exists()
    assert list(wants.iterdir()) == []
    assert (root / "etc/iot-collector/collector.yaml").is_file()
    assert (root / "etc/credstore/iot-collector.app_secret").is_file()
    assert (state / "alerts.json").is_file() and (root / "var/lib/iot-collector").is_symlink()
    assert "Kept:" in proc.stdout and "--purge" in proc.stdout

    again = run("bash", INSTALL, "--root", root, "--uninstall")  # nothing left to do: still fine
    assert again.returncode == 0

    run("bash", INSTALL, "--root", root, "--uninstall", "--purge")
    for gone in ("etc/iot-collector", "etc/credstore/iot-collector.app_secret", "var/lib/private/iot-collector"):
        assert not (root / gone).exists(), gone
    assert not (root / "var/lib/iot-collector").is_symlink()
    # Another service's secret in the shared credential store is not ours to remove.
    assert (root / "etc/credstore/other-service.token").read_text() == "theirs\n"


def test_install_refuses_bad_arguments(tmp_path: Path) -> None:
    proc = run("bash", INSTALL, "--root", tmp_path, "--purge", check=False)
    assert proc.returncode != 0 and "--purge only goes with --uninstall" in proc.stderr
    proc = run("bash", INSTALL, "--root", tmp_path, "--source", tmp_path, check=False)
    assert proc.returncode != 0 and "neither a checkout of iot-collector nor a wheel" in proc.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("unit", ["iot-collector.service", "iot-collector@.service", "iot-collector@0.service"])
def test_installed_units_pass_systemd_analyze_verify(installed: Installed, unit: str, tmp_path: Path) -> None:
    """verify resolves ExecStart= and the targets inside --root: the root is the install plus this
    host's own systemd units and the tools the units name (kill for ExecReload=)."""
    analyze = require("systemd-analyze", "systemd")
    root = tmp_path / "root"
    shutil.copytree(installed.root, root, symlinks=True)
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "usr/bin").mkdir(parents=True, exist_ok=True)
    kill = shutil.which("kill") or "/usr/bin/kill"
    shutil.copy(kill, root / "usr/bin/kill")
    proc = run(analyze, "verify", f"--root={root}", unit, check=False)
    output = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 0 and output == "", f"systemd-analyze verify {unit}:\n{output}"


def test_verify_would_catch_a_missing_program(installed: Installed, tmp_path: Path) -> None:
    """The check above is not vacuous: without the installed program, verify fails."""
    analyze = require("systemd-analyze", "systemd")
    root = tmp_path / "root"
    (root / "etc/systemd/system").mkdir(parents=True)
    for unit in UNITS:
        shutil.copy(REPO / "deploy/systemd" / unit, root / "etc/systemd/system" / unit)
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    proc = run(analyze, "verify", f"--root={root}", "iot-collector.service", check=False)
    assert proc.returncode != 0
    assert f"{PREFIX}/venv/bin/iot-collector" in proc.stdout + proc.stderr


# --- the interpreter ---------------------------------------------------------------------------------------

@pytest.fixture
def home_python(tmp_path: Path) -> Iterator[Path]:
    """A Python living in a home directory, as pyenv or conda install one: the system interpreter's
    binary copied there (it still finds its standard library in /usr)."""
    home = Path.home()
    base = home if str(home).startswith(("/root", "/home/")) and os.access(home, os.W_OK) else tmp_path
    where = Path(tempfile.mkdtemp(prefix="iotc-python-", dir=base))
    (where / "bin").mkdir()
    python = where / "bin/python3"
    shutil.copy(os.path.realpath(system_python()), python)
    yield python
    shutil.rmtree(where)


def test_install_refuses_an_interpreter_the_service_cannot_see(home_python: Path, wheel: Path,
                                                                tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    proc = install(root, wheel, python=str(home_python), check=False)
    assert proc.returncode != 0
    hidden = next(d.rstrip("/") for d in HIDDEN if str(home_python).startswith(d))
    assert f"{home_python}: it is {home_python}, under {hidden}, which the service cannot see" in proc.stderr, \
        proc.stderr
    assert "--python /usr/bin/python3" in proc.stderr
    assert not (root / PREFIX.lstrip("/")).exists(), "a refused install left a tree behind"


def test_install_replaces_a_python3_on_path_under_home_by_a_system_one(home_python: Path, wheel: Path,
                                                                      tmp_path: Path) -> None:
    """No --python: `python3` on PATH is a per-user one (pyenv's shims come first on PATH); an
    earlier install made the venv from it. install.sh says so, makes the venv afresh from a system
    Python, and the service's interpreter is one it can see."""
    system = system_python()
    root = tmp_path / "root"
    venv = root / PREFIX.lstrip("/") / "venv"
    venv.parent.mkdir(parents=True)
    run(home_python, "-m", "venv", "--without-pip", venv)
    assert os.path.realpath(venv / "bin/python") == str(home_python)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "VIRTUAL_ENV")}
    env["PATH"] = f"{home_python.parent}:/usr/local/bin:/usr/bin:/bin"
    proc = install(root, wheel, python="", env=env)
    assert f"python3 on PATH: it is {home_python}" in proc.stdout, proc.stdout
    assert "using /usr" in proc.stdout and "creating the virtual environment" in proc.stdout, proc.stdout
    linked = os.path.realpath(venv / "bin/python")
    assert linked == os.path.realpath(system), linked
    home = dict(line.split(" = ", 1) for line in (venv / "pyvenv.cfg").read_text().splitlines() if " = " in line)
    assert not (home["home"] + "/").startswith(HIDDEN), home
    assert os.access(venv / "bin/iot-collector", os.X_OK)


# --- pinned dependency versions -----------------------------------------------------------------------------

CONSTRAINTS = REPO / "constraints.txt"
TOOLS = {"pip", "setuptools", "wheel", "iot-collector"}  # the installer's own, and the project itself


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned() -> dict[str, str]:
    out = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not name==version"
            out[canonical(name)] = version.strip()
    return out


def test_the_test_venv_has_exactly_the_pinned_versions() -> None:
    """What `make test` installed (scripts/setup.sh --test) is constraints.txt, no more and no other."""
    installed = {canonical(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}
    pins = pinned()
    wrong = {n: (installed.get(n), v) for n, v in pins.items() if installed.get(n) != v}
    assert not wrong, f"installed vs pinned: {wrong} (run scripts/setup.sh --test)"
    extra = sorted(set(installed) - set(pins) - TOOLS)
    assert not extra, f"installed but not pinned in constraints.txt: {extra} (scripts/setup.sh --refresh-constraints)"


def test_every_dependency_of_pyproject_is_pinned() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    names = {canonical(re.split(r"[<>=!~\[; ]", spec, maxsplit=1)[0]) for spec in wanted}
    assert names - set(pinned()) == set()


def test_install_uses_the_constraints_of_the_checkout(installed: Installed) -> None:
    assert f"with the dependency versions of {REPO / 'constraints.txt'}" in installed.first.stdout
    share = installed.root / PREFIX.lstrip("/") / "share"
    assert (share / "constraints.txt").read_bytes() == CONSTRAINTS.read_bytes()
    provisioned = sorted(p.name for p in (share / "grafana/provisioned-dashboards").glob("*.json"))
    assert provisioned == sorted(p.name for p in (REPO / "grafana/dashboards").glob("*.json"))


def test_install_hands_the_constraints_to_pip(wheel: Path, tmp_path: Path) -> None:
    """A constraint the package cannot meet makes pip refuse: the file reaches pip, it is not decoration."""
    conflicting = tmp_path / "constraints.txt"
    conflicting.write_text("iot-collector==0.0.1\n")
    root = tmp_path / "root"
    root.mkdir()
    proc = install(root, wheel, "--constraints", str(conflicting), check=False)
    assert proc.returncode != 0
    assert "pip install failed" in proc.stderr and "0.0.1" in proc.stderr, proc.stderr
    missing = install(root, wheel, "--constraints", str(tmp_path / "nope.txt"), check=False)
    assert missing.returncode != 0 and "no constraints file" in missing.stderr

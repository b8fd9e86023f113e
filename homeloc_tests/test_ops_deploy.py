"""dagster.yaml variants and docker-compose.yml, checked without a Docker engine."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import dagster as dg
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE = ROOT / "docker-compose.yml"
INSTANCE_FILES = [ROOT / "dagster.yaml", DEPLOY / "dagster-postgres.yaml", DEPLOY / "dagster-docker.yaml"]


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def compose() -> dict:
    return load(COMPOSE)


def _env(service: dict) -> dict:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return env


@pytest.mark.parametrize("path", INSTANCE_FILES, ids=lambda p: p.name)
def test_instance_files_match_dagsters_schema(path, tmp_path):
    from dagster._core.instance.config import dagster_instance_config

    shutil.copy(path, tmp_path / "dagster.yaml")
    cfg, _ = dagster_instance_config(str(tmp_path))
    assert cfg["run_coordinator"]["class"] == "QueuedRunCoordinator"
    conc = cfg["concurrency"]
    assert conc["runs"]["max_concurrent_runs"] == 2
    assert conc["pools"]["default_limit"] == 1 and conc["pools"]["granularity"] == "run"


def test_sqlite_instance_loads_with_the_limits(tmp_path):
    shutil.copy(ROOT / "dagster.yaml", tmp_path / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        conc = instance.get_concurrency_config()
        assert conc.run_queue_config.max_concurrent_runs == 2
        assert conc.pool_config.default_pool_limit == 1
        assert conc.pool_config.pool_granularity.value == "run"
        assert instance.event_log_storage.supports_global_concurrency_limits


def test_the_batch_pool_gets_one_slot_so_batch_steps_never_overlap(tmp_path):
    """The pool the batch step claims is limited to one slot by dagster.yaml's default."""
    from homeloc_assets.defs.batches import user_batch_assets

    shutil.copy(ROOT / "dagster.yaml", tmp_path / "dagster.yaml")
    pool = user_batch_assets.op.pool
    assert pool
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        storage = instance.event_log_storage
        assert storage.initialize_concurrency_limit_to_default(pool)
        assert storage.get_concurrency_info(pool).slot_count == 1


@pytest.mark.parametrize("path", INSTANCE_FILES[1:], ids=lambda p: p.name)
def test_postgres_storage_takes_the_password_from_the_environment(path, monkeypatch):
    from dagster._config import process_config, resolve_to_config_type
    from dagster_postgres import DagsterPostgresStorage

    pg = load(path)["storage"]["postgres"]["postgres_db"]
    assert pg["password"] == {"env": "DAGSTER_PG_PASSWORD"}
    assert all(isinstance(v, dict) and set(v) == {"env"} for k, v in pg.items() if k != "port")
    for var in ("HOST", "DB", "USER", "PASSWORD"):
        monkeypatch.setenv(f"DAGSTER_PG_{var}", f"from-env-{var.lower()}")
    schema = resolve_to_config_type(DagsterPostgresStorage.config_type())
    result = process_config(schema, {"postgres_db": pg})
    assert result.success, result.errors
    assert result.value["postgres_db"]["password"] == "from-env-password"
    assert "password" not in path.read_text().split("password:")[1].split("\n")[0]  # no literal


def test_compose_services_images_and_builds(compose):
    services = compose["services"]
    assert set(services) == {"postgres", "homeloc_code", "dagster_webserver", "dagster_daemon"}
    for name, svc in services.items():
        build = svc["build"]
        ctx = ROOT / build["context"]
        dockerfile = ctx / build.get("dockerfile", "Dockerfile")
        assert dockerfile.is_file(), f"{name}: {dockerfile} missing"
        assert svc["image"]
        text = dockerfile.read_text()
        for src in re.findall(r"^COPY\s+(.+)\s+\S+$", text, flags=re.M):
            for part in src.split():
                assert list(ctx.glob(part)), f"{name}: COPY source {part} not in {ctx}"
    pg = (DEPLOY / "postgres" / "Dockerfile").read_text()
    assert re.search(r"^FROM postgres:15\b", pg, flags=re.M)
    assert "postgresql-15-hll" in pg
    init = (DEPLOY / "postgres" / "init-hll.sql").read_text()
    assert "CREATE EXTENSION IF NOT EXISTS hll" in init and "CREATE DATABASE homeloc" in init
    assert services["dagster_webserver"]["entrypoint"][0] == "dagster-webserver"
    assert services["dagster_daemon"]["entrypoint"][:2] == ["dagster-daemon", "run"]
    code = (DEPLOY / "Dockerfile.homeloc").read_text()
    assert '"code-server", "start"' in code and '"homeloc_assets.definitions"' in code
    # the image builds the compiled hll kernel, and fails to build without it
    assert "setup.py" in code and "gcc" in code and "import homeloc_assets.hll._kernel" in code


def test_compose_ports_only_on_localhost(compose):
    seen = 0
    for name, svc in compose["services"].items():
        for port in svc.get("ports", []):
            seen += 1
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond localhost"
    assert seen >= 1
    assert compose["services"]["dagster_webserver"]["ports"] == ["127.0.0.1:3000:3000"]


def test_compose_volumes_network_and_env_agree_with_the_instance(compose):
    services = compose["services"]
    inst = load(DEPLOY / "dagster-docker.yaml")
    launcher = inst["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_docker", "DockerRunLauncher")
    cfg = launcher["config"]
    # the launcher refers to the network and volumes by their fixed names
    assert compose["networks"]["homeloc_network"]["name"] == cfg["network"]
    volume_names = {v["name"] for v in compose["volumes"].values()}
    code_mounts = set(services["homeloc_code"]["volumes"])
    for mount in cfg["container_kwargs"]["volumes"]:
        vol = mount.split(":")[0]
        assert vol in volume_names
        assert mount in code_mounts  # run containers see what the code server sees
    # every declared volume used by a service exists
    for name, svc in services.items():
        for mount in svc.get("volumes", []):
            src = mount.split(":")[0]
            assert src.startswith("/") or src in compose["volumes"], f"{name}: {src}"
    assert "homeloc_input:/data/input:ro" in code_mounts
    # the env the instance and the run containers need is set where Dagster runs
    needed = set(cfg["env_vars"])
    needed |= {v["env"] for v in inst["storage"]["postgres"]["postgres_db"].values()
               if isinstance(v, dict)}
    for name in ("homeloc_code", "dagster_webserver", "dagster_daemon"):
        env = _env(services[name])
        missing = needed - set(env)
        assert not missing, f"{name} lacks {missing}"
        assert env["DAGSTER_PG_HOST"] == "postgres"
        assert env["HOMELOC_INPUT_DIR"] == "/data/input"
        assert env["HOMELOC_OUTPUT_DIR"] == "/data/output"
    assert _env(services["homeloc_code"])["DAGSTER_CURRENT_IMAGE"] == services["homeloc_code"]["image"]
    pg_env = _env(services["postgres"])
    assert pg_env["POSTGRES_USER"] == _env(services["dagster_daemon"])["DAGSTER_PG_USER"]
    assert pg_env["POSTGRES_DB"] == _env(services["dagster_daemon"])["DAGSTER_PG_DB"]
    # no literal passwords: they come from .env
    for svc in services.values():
        for key, value in _env(svc).items():
            if "PASSWORD" in key:
                assert str(value).startswith("${"), key
    # the images use the instance file validated above and the gRPC workspace
    for df in ("Dockerfile.dagster", "Dockerfile.homeloc"):
        assert "COPY deploy/dagster-docker.yaml $DAGSTER_HOME/dagster.yaml" in (DEPLOY / df).read_text()
    ws = load(DEPLOY / "workspace.docker.yaml")["load_from"][0]["grpc_server"]
    assert ws["host"] == "homeloc_code" and str(ws["port"]) in (DEPLOY / "Dockerfile.homeloc").read_text()


def test_env_example_names_every_compose_variable(compose):
    names = set(re.findall(r"\$\{([A-Z_]+)", COMPOSE.read_text()))
    example = (DEPLOY / "env.example").read_text()
    for name in names:
        assert re.search(rf"^{name}=", example, flags=re.M), name


def _dg() -> Path | None:
    import sys

    exe = Path(sys.executable).parent / "dg"
    return exe if exe.exists() else None


@pytest.mark.skipif(_dg() is None, reason="dagster-dg-cli is not installed")
@pytest.mark.slow
def test_dg_check_and_list_defs_load_the_project(tmp_path):
    """``dg check defs`` / ``dg list defs`` find the project through pyproject's ``[tool.dg]``
    and load the same definitions as ``workspace.yaml`` (which stays for ``dagster dev``)."""
    import os
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(ROOT), "DAGSTER_HOME": str(tmp_path),
           "HOMELOC_OUTPUT_DIR": str(tmp_path / "out"), "NO_COLOR": "1", "COLUMNS": "300"}
    check = subprocess.run([str(_dg()), "check", "defs"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "All definitions loaded successfully" in check.stdout + check.stderr
    listed = subprocess.run([str(_dg()), "list", "defs", "--json"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert "user_classification" in listed.stdout and "homeloc_input_sensor" in listed.stdout
    ws = load(ROOT / "workspace.yaml")["load_from"][0]["python_module"]
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["dg"]["project"]
    assert ws["module_name"] == project["code_location_target_module"]
    assert ws["location_name"] == project["code_location_name"]

"""docker-compose.yml, docker-compose.gpu.yml, Dockerfile and .dockerignore, checked without Docker.

Docker cannot run where the tests run, so these tests read the files: the services and how they wait
for each other, the environment the backend and dashboard read, and every `clipmem ...` command the
containers run, which must be a real subcommand whose options exist (checked against `--help` and by
letting click parse the arguments, without running the command).
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import typer
import yaml
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from clipmem.cli import app

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_GPU = ROOT / "docker-compose.gpu.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

SERVICES = {"db", "api", "ui", "scorer"}
CLIPMEM_IMAGE_SERVICES = ("api", "ui", "scorer")

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}; `$$` is compose's escape for a literal `$`.
_INTERPOLATION = re.compile(r"(?<!\$)\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


# ---------------------------------------------------------------------------------------------- helpers

def load_yaml(path: Path) -> dict:
    assert path.is_file(), f"{path.name} is missing"
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path.name} is not a YAML mapping"
    return data


def interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Compose's variable interpolation as `docker compose` does it with an empty shell environment
    (plus `env`), then `$$` -> `$`."""
    env = env or {}

    def sub(m: re.Match) -> str:
        name, op, arg = m.group("name"), m.group("op"), m.group("arg")
        if name in env:
            return env[name]
        if op in (":-", "-"):
            return arg
        if op in (":?", "?"):
            raise AssertionError(f"${{{name}}} is required: {arg}")
        return ""

    return _INTERPOLATION.sub(sub, value).replace("$$", "$")


def environment(service: dict) -> dict[str, str]:
    """A service's environment (mapping or list form), interpolated."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) if "=" in item else (item, "") for item in raw)
    return {k: interpolate("" if v is None else str(v)) for k, v in raw.items()}


def as_argv(command) -> list[str]:
    if isinstance(command, str):
        return shlex.split(command)
    assert isinstance(command, list) and all(isinstance(a, str) for a in command), command
    return list(command)


def shell_expand(script: str, env: dict[str, str]) -> str:
    """Expand $VAR / ${VAR} of the container's shell from the service's environment; an unknown
    variable is an error (the script would see it empty)."""

    def sub(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        assert name in env, f"the command uses ${name}, which the service's environment does not set"
        return env[name]

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)", sub, script)


def clipmem_commands(command, env: dict[str, str]) -> list[list[str]]:
    """Every `clipmem ...` invocation in a container command (exec form, or `sh -c SCRIPT`)."""
    argv = [interpolate(a) for a in as_argv(command)]
    if argv[:2] in (["sh", "-c"], ["bash", "-c"], ["/bin/sh", "-c"]):
        script = shell_expand(argv[2], env)
        pieces = re.split(r"&&|\|\||;|\n", script)
        argvs = [shlex.split(p) for p in pieces if p.strip()]
    else:
        argvs = [argv]
    return [a for a in argvs if a and a[0] == "clipmem"]


def help_text(subcommand: str) -> str:
    result = CliRunner().invoke(app, [subcommand, "--help"], env={"COLUMNS": "250", "TERMINAL_WIDTH": "250"})
    assert result.exit_code == 0, f"`clipmem {subcommand} --help` failed:\n{result.output}"
    return re.sub(r"\x1b\[[0-9;]*m", "", result.output)


def check_clipmem_command(argv: list[str]) -> None:
    """`argv` (starting with 'clipmem') names a real subcommand, every --option in it appears in that
    subcommand's --help, and click accepts the arguments (types, required options, argument count)."""
    assert argv[0] == "clipmem" and len(argv) >= 2, f"not a clipmem subcommand: {argv}"
    subcommand, args = argv[1], argv[2:]
    command = typer.main.get_command(app).commands.get(subcommand)
    assert command is not None, f"`clipmem {subcommand}` is not a clipmem command (from {shlex.join(argv)})"
    text = help_text(subcommand)
    for arg in args:
        if arg.startswith("--"):
            option = arg.split("=", 1)[0]
            assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text), (
                f"`clipmem {subcommand}` has no option {option} (not in its --help)")
    try:
        command.make_context(f"clipmem {subcommand}", list(args))
    except Exception as exc:  # click's usage errors (typer may ship its own copy of click)
        if not hasattr(exc, "format_message"):
            raise
        raise AssertionError(f"`{shlex.join(argv)}` is not accepted by the CLI: {exc.format_message()}") from None


def parse_dockerfile(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments and blank lines dropped, `\\` continuations joined."""
    instructions, pending = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1].rstrip() + " "
            continue
        full = (pending + stripped).strip()
        pending = ""
        if not full:
            continue
        keyword, _, rest = full.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


def exec_form(args: str) -> list[str]:
    """CMD/ENTRYPOINT arguments: JSON (exec) form, or shell form split like /bin/sh would."""
    if args.startswith("["):
        value = json.loads(args)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
        return value
    return shlex.split(args)


def container_ports(service: dict) -> set[int]:
    ports = set()
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            ports.add(int(entry["target"]))
        else:
            spec = interpolate(str(entry)).split("/")[0]
            ports.add(int(spec.rsplit(":", 1)[-1]))
    return ports


def named_volumes(service: dict) -> dict[str, str]:
    """{volume name: mount point} of the service's named-volume mounts (bind mounts left out)."""
    out = {}
    for entry in service.get("volumes", []):
        if isinstance(entry, dict):
            if entry.get("type", "volume") == "volume":
                out[entry["source"]] = entry["target"]
            continue
        source, target = entry.split(":")[:2]
        if not source.startswith((".", "/", "~", "$")):
            out[source] = target
    return out


def option_value(argv: list[str], option: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == option and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(option + "="):
            return arg.split("=", 1)[1]
    return None


def healthcheck_argv(service: dict) -> list[str]:
    test = service["healthcheck"]["test"]
    argv = as_argv(test)
    if argv[0] == "CMD-SHELL":
        return ["sh", "-c", " ".join(argv[1:])]
    assert argv[0] == "CMD", f"healthcheck test must start with CMD or CMD-SHELL: {argv}"
    return argv[1:]


# --------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def compose() -> dict:
    return load_yaml(COMPOSE)


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    assert DOCKERFILE.is_file(), "Dockerfile is missing"
    return parse_dockerfile(DOCKERFILE.read_text())


# ------------------------------------------------------------------------------------- the test helpers

def test_the_checker_rejects_unknown_commands_and_options():
    """The command check itself must be able to fail."""
    check_clipmem_command(["clipmem", "serve", "--host", "0.0.0.0", "--port", "8000"])
    with pytest.raises(AssertionError, match="not a clipmem command"):
        check_clipmem_command(["clipmem", "serv"])
    with pytest.raises(AssertionError, match="no option --hots"):
        check_clipmem_command(["clipmem", "serve", "--hots", "0.0.0.0"])
    with pytest.raises(AssertionError, match="no option --out"):  # --out is a `run` option, not `ingest`'s
        check_clipmem_command(["clipmem", "ingest", "--out", "x"])
    with pytest.raises(AssertionError, match="not accepted"):  # `run` requires --out
        check_clipmem_command(["clipmem", "run", "--overwrite"])
    with pytest.raises(AssertionError, match="not accepted"):
        check_clipmem_command(["clipmem", "serve", "--port", "http"])


def test_interpolation_and_dockerfile_parser():
    assert interpolate("a${X:-b}c$${Y}") == "abc${Y}"
    assert interpolate("${X:-b}", {"X": "z"}) == "z"
    assert parse_dockerfile("# c\nFROM a\nRUN x \\\n  # inner\n  && y\nCMD [\"p\"]\n") == [
        ("FROM", "a"), ("RUN", "x && y"), ("CMD", '["p"]')]


# ------------------------------------------------------------------------------------------------ compose

def test_the_four_services(services):
    assert set(services) == SERVICES


def test_every_variable_has_a_default(compose):
    """`docker compose up` works with no .env file: every ${VAR} used by compose has a default."""
    text = COMPOSE.read_text()
    for m in _INTERPOLATION.finditer(text):
        assert m.group("op") in (":-", "-"), f"${{{m.group('name')}}} has no default"


def test_db_postgres_with_healthcheck_and_named_volume(compose, services):
    db = services["db"]
    assert str(db["image"]).startswith("postgres:")
    env = environment(db)
    for key in ("POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"):
        assert env.get(key), f"db needs {key}"
    check = " ".join(healthcheck_argv(db))
    assert "pg_isready" in check
    assert f"-U {env['POSTGRES_USER']}" in check
    volumes = named_volumes(db)
    assert "/var/lib/postgresql/data" in volumes.values(), "db's data must live in a named volume"
    for name in volumes:
        assert name in (compose.get("volumes") or {}), f"volume {name} is not declared at top level"


def test_clipmem_services_share_the_repository_image(services):
    images = set()
    for name in CLIPMEM_IMAGE_SERVICES:
        service = services[name]
        build = service.get("build")
        assert build is not None, f"{name} must be built from the repository"
        context = build if isinstance(build, str) else build.get("context", ".")
        dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        assert (ROOT / context / dockerfile).resolve() == DOCKERFILE
        images.add(service.get("image"))
    assert len(images) == 1 and None not in images, f"api, ui and scorer should share one image: {images}"


def test_api_and_ui_wait_for_healthy_dependencies(services):
    for name, needs in (("api", "db"), ("ui", "api"), ("scorer", "db")):
        depends = services[name].get("depends_on")
        assert isinstance(depends, dict), f"{name}.depends_on must be the long form with a condition"
        assert depends.get(needs, {}).get("condition") == "service_healthy", f"{name} must wait for {needs}"
    for name in ("db", "api"):
        assert "healthcheck" in services[name], f"{name} is waited for, so it needs a healthcheck"


def test_database_url_points_at_the_db_service(services):
    db_env = environment(services["db"])
    urls = {name: environment(services[name]).get("CLIPMEM_DATABASE_URL") for name in ("api", "scorer")}
    assert urls["api"] == urls["scorer"], "api and scorer must use the same database"
    url = make_url(urls["api"])
    assert url.drivername == "postgresql+psycopg"
    assert (url.host, url.port) == ("db", 5432)
    assert url.username == db_env["POSTGRES_USER"]
    assert url.password == db_env["POSTGRES_PASSWORD"]
    assert url.database == db_env["POSTGRES_DB"]


TOKEN_VARIABLES = ("CLIPMEM_API_TOKEN", "CLIPMEM_API_WRITE_TOKEN")


def test_the_api_holds_both_tokens_and_they_are_optional(services):
    raw = services["api"].get("environment") or {}
    for name in TOKEN_VARIABLES:
        assert raw.get(name) is not None, f"api must pass {name}"
        assert environment(services["api"])[name] == "", f"{name} must default to empty (no token)"
        assert interpolate(raw[name], {name: "s3cret"}) == "s3cret"


def test_the_dashboard_holds_no_token(services):
    """The ui service is published; a token in its environment would be used on behalf of every visitor (or
    could be), so visitors sign in with their own and the container gets none, by any route."""
    ui = services["ui"]
    for name in TOKEN_VARIABLES:
        assert name not in environment(ui), f"ui must not receive {name}"
    assert "env_file" not in ui, "an env_file could hand the dashboard the tokens"
    assert not any("TOKEN" in str(arg) for arg in as_argv(ui["command"]))


def test_api_serves_on_its_published_port_with_a_health_check(services):
    api = services["api"]
    commands = clipmem_commands(api["command"], environment(api))
    assert [c[1] for c in commands] == ["serve"]
    serve = commands[0]
    assert option_value(serve, "--host") == "0.0.0.0", "inside a container serve must listen on every interface"
    port = int(option_value(serve, "--port") or 8000)
    assert port in container_ports(api)
    check = healthcheck_argv(api)
    assert check[0] == "python" and check[1] == "-c", "the slim image has no curl: use python"
    compile(check[2], "<healthcheck>", "exec")
    assert f"127.0.0.1:{port}/health" in check[2] or f"localhost:{port}/health" in check[2]


def test_ui_talks_to_the_api_service(services):
    ui = services["ui"]
    env = environment(ui)
    commands = clipmem_commands(ui["command"], env)
    assert [c[1] for c in commands] == ["ui"]
    ui_cmd = commands[0]
    assert option_value(ui_cmd, "--host") == "0.0.0.0"
    assert "--with-backend" not in ui_cmd, "the api service is the backend"
    assert int(option_value(ui_cmd, "--port") or 8501) in container_ports(ui)
    api_port = int(option_value(clipmem_commands(services["api"]["command"], {})[0], "--port") or 8000)
    assert env.get("CLIPMEM_API_URL") == f"http://api:{api_port}"
    if "healthcheck" in ui:
        check = healthcheck_argv(ui)
        compile(check[2], "<healthcheck>", "exec")


def test_scorer_only_in_its_profile(services):
    assert services["scorer"].get("profiles") == ["scorer"]
    for name in SERVICES - {"scorer"}:
        assert not services[name].get("profiles"), f"{name} must start with a plain `docker compose up`"


def test_scorer_runs_then_ingests_the_same_directory(compose, services):
    scorer = services["scorer"]
    env = environment(scorer)
    commands = clipmem_commands(scorer["command"], env)
    assert [c[1] for c in commands] == ["run", "ingest"]
    run, ingest = commands
    out = option_value(run, "--out")
    assert out and out.startswith("/runs/")
    assert ingest[2] == out, "ingest must load the directory the run wrote"
    assert "--overwrite" in run and "--replace" in ingest, "running the scorer twice must work"
    runs_volume = {v: k for k, v in named_volumes(scorer).items()}.get("/runs")
    assert runs_volume in (compose.get("volumes") or {}), "run directories must live in a declared named volume"
    # the API serves images from the ingested run directories, at the same paths
    assert named_volumes(services["api"]).get(runs_volume) == "/runs"
    # extra options arrive through CLIPMEM_RUN_ARGS
    with_args = clipmem_commands(scorer["command"], {**env, "CLIPMEM_RUN_ARGS": "--model ViT-B-32 --epochs 5"})
    assert with_args[0][-4:] == ["--model", "ViT-B-32", "--epochs", "5"]


@pytest.mark.parametrize("source", ["docker-compose.yml", "Dockerfile"])
def test_every_clipmem_command_is_real(source, services, dockerfile):
    if source == "Dockerfile":
        commands = [exec_form(args) for kw, args in dockerfile if kw in ("CMD", "ENTRYPOINT")]
    else:
        commands = []
        for service in services.values():
            if "command" in service:
                commands += clipmem_commands(service["command"], environment(service))
    commands = [c for c in commands if c and c[0] == "clipmem"]
    assert commands, f"no clipmem command found in {source}"
    for argv in commands:
        check_clipmem_command(argv)


def test_gpu_override_reserves_nvidia_devices_for_the_scorer(services):
    base_deploy = json.dumps({n: s.get("deploy") for n, s in services.items()})
    assert "nvidia" not in base_deploy, "a GPU reservation in the base file would make the GPU mandatory"
    gpu = load_yaml(COMPOSE_GPU)["services"]
    assert set(gpu) == {"scorer"}
    devices = gpu["scorer"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)
    args = gpu["scorer"]["build"]["args"]
    arg_names = {a.split("=", 1)[0] for kw, a in parse_dockerfile(DOCKERFILE.read_text()) if kw == "ARG"}
    assert set(args) <= arg_names, f"build args {set(args) - arg_names} are not ARGs of the Dockerfile"
    assert gpu["scorer"].get("image") not in (None, services["scorer"]["image"]), (
        "the CUDA image needs its own tag, or it would replace the CPU image of api and ui")


# ---------------------------------------------------------------------------------------------- Dockerfile

def test_dockerfile_base_install_and_user(dockerfile):
    keywords = [kw for kw, _ in dockerfile]
    assert keywords[0] in ("FROM", "ARG")
    froms = [a for kw, a in dockerfile if kw == "FROM"]
    assert froms and froms[-1].split()[0] == "python:3.11-slim"
    runs = " ".join(a for kw, a in dockerfile if kw == "RUN")
    assert "pip install" in runs
    copied = " ".join(a for kw, a in dockerfile if kw in ("COPY", "ADD"))
    for needed in ("pyproject.toml", "scoring", "backend", "frontend"):
        assert re.search(rf"(?<![\w/.-]){re.escape(needed)}(?![\w-])", copied), f"the image needs {needed}"
    users = [a for kw, a in dockerfile if kw == "USER"]
    assert users, "the image must not run as root"
    final_user = users[-1].split(":")[0]
    assert final_user not in ("root", "0")
    last_user = max(i for i, (kw, _) in enumerate(dockerfile) if kw == "USER")
    last_cmd = max(i for i, (kw, _) in enumerate(dockerfile) if kw == "CMD")
    assert last_user < last_cmd


def test_dockerfile_copies_existing_paths_not_ignored(dockerfile):
    ignored = {line.strip() for line in DOCKERIGNORE.read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    for kw, args in dockerfile:
        if kw != "COPY" or args.startswith("--from"):
            continue
        *sources, _dest = [a for a in shlex.split(args) if not a.startswith("--")]
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: no such path in the repository"
            assert source not in ignored, f"COPY {source}, but .dockerignore leaves it out"


def test_dockerfile_cmd_and_ports(dockerfile, services):
    cmds = [exec_form(a) for kw, a in dockerfile if kw == "CMD"]
    cmd = cmds[-1]
    assert cmd[:2] == ["clipmem", "serve"], f"default CMD should start the API: {cmd}"
    check_clipmem_command(cmd)
    assert option_value(cmd, "--host") == "0.0.0.0"
    exposed = {int(p.split("/")[0]) for kw, a in dockerfile if kw == "EXPOSE" for p in a.split()}
    published = container_ports(services["api"]) | container_ports(services["ui"])
    assert exposed == published == {8000, 8501}


def test_dockerignore_keeps_the_context_small():
    entries = {line.strip().rstrip("/") for line in DOCKERIGNORE.read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    for needed in (".venv", "runs", "*.db", "bench/results", "test-artifacts", ".git"):
        assert needed in entries, f".dockerignore should leave out {needed}"

"""The Dockerfile, checked without a Docker engine.

What can be known without building: the base images are pinned, dependencies come from
uv.lock before the source, every path the build copies exists and is in the build context,
the entrypoint is a real console script that accepts its arguments, the user is numeric and
not root, the runtime fits the chart's read-only root filesystem, and the baked-in demo
model is complete enough to be served.
"""

from __future__ import annotations

import json
import re
import shutil
import tomllib
from dataclasses import dataclass
from pathlib import Path

from predictor import __version__
from predictor.cli import build_parser
from predictor.config import Settings
from predictor.store.manifest import discover
from tests.chart_support import render

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
ENTRYPOINT = ["gpu-predictor", "serve", "--model-dir", "/mnt/models"]
KSERVE_MODEL_DIR = "/mnt/models"  # where KServe's storage initializer puts a storageUri


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction: keyword, its arguments, and the build stage it is in."""

    keyword: str
    args: str
    stage: int


def instructions() -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "Dockerfile ends inside a continued line"
    result = []
    stage = -1
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        result.append(Instruction(keyword, args.strip(), stage))
    return result


def build_args() -> dict[str, str]:
    """Default values of the ARGs declared before the first FROM."""
    args = {}
    for ins in instructions():
        if ins.keyword == "FROM":
            break
        if ins.keyword == "ARG" and "=" in ins.args:
            name, value = ins.args.split("=", 1)
            args[name] = value
    return args


def expand(text: str, args: dict[str, str]) -> str:
    """Substitute ``${NAME}`` and ``$NAME`` from ``args``."""
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), text)


def final_stage() -> int:
    """Index of the last build stage (the image)."""
    return max(i.stage for i in instructions())


def stage_instructions(keyword: str, stage: int | None = None) -> list[Instruction]:
    """Instructions of one keyword, in one stage (all stages when None)."""
    return [
        i for i in instructions() if i.keyword == keyword and (stage is None or i.stage == stage)
    ]


def flags_and_operands(args: str) -> tuple[dict[str, str], list[str]]:
    """Split ``--flag=value`` options from the operands of COPY/RUN arguments."""
    flags: dict[str, str] = {}
    words = args.split()
    while words and words[0].startswith("--"):
        name, _, value = words.pop(0)[2:].partition("=")
        flags[name] = value
    return flags, words


def env_of_stage(stage: int) -> dict[str, str]:
    """ENV values set in a stage (``KEY=VALUE`` form)."""
    env: dict[str, str] = {}
    for ins in stage_instructions("ENV", stage):
        for key, value in re.findall(r"(\w+)=(\S+)", ins.args):
            env[key] = value
    return env


# ---- .dockerignore --------------------------------------------------------------------------


def ignored(path: str) -> bool:
    """Whether .dockerignore keeps ``path`` (relative, '/'-separated) out of the context."""
    verdict = False
    for raw in DOCKERIGNORE.read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        regex = "".join(
            ".*" if part == "**" else re.escape(part).replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
            for part in re.split(r"(\*\*)", pattern)
        )
        # A pattern matching a directory excludes everything under it.
        if re.fullmatch(rf"{regex}(/.*)?", path):
            verdict = not negate
    return verdict


def test_dockerignore_matcher_follows_docker_semantics() -> None:
    assert ignored(".venv/bin/python")
    assert ignored("predictor/__pycache__/cli.cpython-311.pyc")
    assert ignored("models/digits/samples/digit-7.png")
    assert ignored("models/digits/train.py")
    assert not ignored("models/digits/weights.pt")
    assert not ignored("predictor/cli.py")


# ---- base images ----------------------------------------------------------------------------


def test_base_images_are_pinned_by_version() -> None:
    args = build_args()
    aliases: set[str] = set()
    images = []
    for ins in stage_instructions("FROM"):
        words = expand(ins.args, args).split()
        image = words[0]
        if image not in aliases:
            images.append(image)
        if len(words) == 3 and words[1].upper() == "AS":
            aliases.add(words[2])
    assert images, "no base image"
    for image in images:
        name, _, tag = image.rpartition(":")
        assert name, f"{image}: untagged base image"
        assert "/" not in tag, f"{image}: untagged base image"
        assert tag != "latest", f"{image}: `latest` is not a version"
        assert re.match(r"^v?\d+\.\d+\.\d+", tag), f"{image}: pin a full version, not {tag!r}"


def test_python_base_matches_the_projects_python() -> None:
    python_image = build_args()["PYTHON_IMAGE"]
    match = re.match(r"python:(\d+)\.(\d+)\.\d+-slim", python_image)
    assert match, python_image
    version = (int(match.group(1)), int(match.group(2)))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    low, high = re.findall(r"(\d+)\.(\d+)", project["requires-python"])
    assert (int(low[0]), int(low[1])) <= version < (int(high[0]), int(high[1]))
    # Both stages run the same interpreter: the venv built in one runs in the other.
    froms = [expand(i.args, build_args()).split()[0] for i in stage_instructions("FROM")]
    assert froms.count(python_image) == 2


# ---- dependencies and source ----------------------------------------------------------------


def test_dependencies_come_from_the_lock_before_the_source() -> None:
    all_ins = instructions()
    syncs = [n for n, i in enumerate(all_ins) if i.keyword == "RUN" and "uv sync" in i.args]
    copy_source = [
        n
        for n, i in enumerate(all_ins)
        if i.keyword == "COPY" and "predictor" in flags_and_operands(i.args)[1][:-1]
    ]
    assert len(syncs) == 2, "one sync for the dependencies, one for the project"
    assert copy_source, "the source is never copied"
    deps, project = (all_ins[n].args for n in syncs)
    assert syncs[0] < copy_source[0] < syncs[1]
    for args in (deps, project):
        assert "--frozen" in args, "install exactly what uv.lock pins"
        assert "--no-dev" in args, "no test tools in the image"
        assert "--all-groups" not in args
    assert "--no-install-project" in deps
    assert "source=uv.lock" in deps, "the dependency layer sees the lock file"
    assert "--no-editable" in project, "the project is installed, not linked to /src"


def test_torch_is_the_cuda_build() -> None:
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    (torch,) = [p for p in lock["package"] if p["name"] == "torch"]
    assert torch["source"] == {"registry": "https://pypi.org/simple"}, "not a CPU-only index"
    linux_deps = {d["name"] for d in torch["dependencies"] if "linux" in d.get("marker", "linux")}
    assert any(name.startswith("nvidia-cudnn") for name in linux_deps), linux_deps
    assert any(name.startswith("nvidia-nccl") for name in linux_deps), linux_deps
    assert "download.pytorch.org/whl/cpu" not in DOCKERFILE.read_text()


# ---- copied paths ---------------------------------------------------------------------------


def copied_sources() -> list[tuple[str, str]]:
    """(source, destination) of every COPY from the build context, and of RUN bind mounts."""
    pairs = []
    for ins in instructions():
        if ins.keyword == "COPY":
            flags, operands = flags_and_operands(ins.args)
            if "from" in flags:
                continue
            *sources, destination = operands
            pairs += [(source, destination) for source in sources]
        if ins.keyword == "RUN":
            for mount in re.findall(r"--mount=(\S+)", ins.args):
                options = dict(o.split("=", 1) for o in mount.split(",") if "=" in o)
                if options.get("type") == "bind" and "from" not in options:
                    pairs.append((options["source"], options["target"]))
    return pairs


def test_every_copied_path_exists_and_is_in_the_build_context() -> None:
    pairs = copied_sources()
    assert pairs
    for source, _ in pairs:
        path = ROOT / source
        assert path.exists(), f"COPY {source}: no such path in the repository"
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        kept = [f for f in files if not ignored(f.relative_to(ROOT).as_posix())]
        assert kept, f"COPY {source}: .dockerignore leaves nothing of it in the context"
        assert not ignored(source), f"COPY {source}: excluded by .dockerignore"
    # pyproject.toml names README.md as the readme: the project build needs it.
    assert ("README.md", "./") in pairs


def test_demo_model_is_baked_in_complete(tmp_path: Path) -> None:
    model_dir = f"{KSERVE_MODEL_DIR}/digits/"
    baked = [source for source, destination in copied_sources() if destination == model_dir]
    names = {Path(source).name for source in baked}
    manifest = json.loads((ROOT / "models" / "digits" / "model.json").read_text())
    needed = {"model.json"} | {
        manifest[key] for key in ("weights", "labels", "program") if key in manifest
    }
    assert needed <= names, f"the image misses {needed - names}"
    assert "train.py" not in names
    assert all("samples" not in source for source in baked)
    # The image's layout, as the entrypoint sees it, serves the demo model, renamed by the
    # chart's PREDICTOR_MODEL_NAME since it is the only one.
    image_models = tmp_path / "mnt" / "models"
    (image_models / "digits").mkdir(parents=True)
    for source in baked:
        shutil.copy(ROOT / source, image_models / "digits")
    (spec,) = discover(image_models)
    assert spec.name == "digits"
    (renamed,) = discover(image_models, "resnet50")
    assert renamed.name == "resnet50"


# ---- runtime --------------------------------------------------------------------------------


def test_entrypoint_is_the_serve_command_in_exec_form() -> None:
    (entrypoint,) = stage_instructions("ENTRYPOINT", final_stage())
    assert entrypoint.args.startswith("["), "exec form: signals reach the server, no shell"
    command = json.loads(entrypoint.args)
    assert command == ENTRYPOINT
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts[command[0]] == "predictor.cli:main"
    args = build_parser().parse_args(command[1:])
    assert args.command == "serve"
    assert args.model_dir == KSERVE_MODEL_DIR
    assert not stage_instructions("CMD", final_stage()), "a CMD would be appended as arguments"


def test_user_is_numeric_and_not_root() -> None:
    users = stage_instructions("USER", final_stage())
    assert users, "the image runs as root"
    uid, _, gid = users[-1].args.partition(":")
    assert uid.isdigit(), f"USER {users[-1].args}: numeric, so runAsNonRoot can verify it"
    assert int(uid) != 0
    assert not gid or gid.isdigit()
    # The chart runs the pod as the image's user.
    securitycontext = render().container["securityContext"]
    assert securitycontext["runAsUser"] == int(uid)


def test_runtime_fits_a_read_only_root_filesystem() -> None:
    env = env_of_stage(final_stage())
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    build_env: dict[str, str] = {}
    for stage in range(final_stage()):
        build_env |= env_of_stage(stage)
    assert build_env.get("UV_COMPILE_BYTECODE") == "1", "bytecode is compiled at build time"
    r = render()
    volumes = {v["name"]: v for v in r.predictor["volumes"]}
    writable = [
        m["mountPath"] for m in r.container["volumeMounts"] if "emptyDir" in volumes[m["name"]]
    ]
    for variable in ("HOME", "TMPDIR", "XDG_CACHE_HOME"):
        path = env[variable]
        assert any(path == w or path.startswith(w + "/") for w in writable), (
            f"{variable}={path} is not on a volume the chart makes writable ({writable})"
        )


def test_oci_labels() -> None:
    labels: dict[str, str] = {}
    args = {
        name: value
        for ins in stage_instructions("ARG", final_stage())
        for name, _, value in [ins.args.partition("=")]
    }
    for ins in stage_instructions("LABEL", final_stage()):
        for key, value in re.findall(r'([\w.-]+)="([^"]*)"', ins.args):
            labels[key] = expand(value, args)
    prefix = "org.opencontainers.image."
    for key in ("title", "description", "version", "licenses", "source"):
        assert labels.get(prefix + key), f"missing OCI label {prefix}{key}"
    assert labels[prefix + "version"] == __version__
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert labels[prefix + "licenses"] == project["license"]["text"]


def test_exposed_ports_are_the_predictors() -> None:
    (expose,) = stage_instructions("EXPOSE", final_stage())
    ports = sorted(int(p.split("/")[0]) for p in expose.args.split())
    assert ports == sorted([Settings.http_port, Settings.grpc_port])
    chart_ports = [p["containerPort"] for p in render().container["ports"]]
    assert sorted(chart_ports) == ports


def test_no_remote_or_archive_adds() -> None:
    assert not stage_instructions("ADD"), "use COPY: ADD fetches URLs and unpacks archives"

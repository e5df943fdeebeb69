"""Chart test helpers: render with the real Helm engine, validate what comes out.

Rendering goes through ``helm_python`` (Helm v4's Go SDK, offline). Validation is what an
API server would do on ``kubectl apply --validate=strict``:

- core kinds (Pod, Secret, ConfigMap, NetworkPolicy, PodDisruptionBudget) against the
  Kubernetes OpenAPI schemas shipped by ``kubernetes-validate`` (strict: unknown fields are
  errors), for the oldest Kubernetes the chart supports and the newest one known;
- custom resources (InferenceService, PodMonitor, PrometheusRule) against the upstream CRDs
  vendored in ``tests/schemas/crds/``, converted from OpenAPI v3 structural schemas to JSON
  Schema (int-or-string, nullable, int32/int64 bounds; objects without
  ``x-kubernetes-preserve-unknown-fields`` refuse unknown fields, as strict field
  validation does);
- metadata of every object: names, label keys and values, annotation keys as the API server
  checks them.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import yaml
from kubernetes_validate import utils as kv_utils

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "gpu-predictor"
CRD_DIR = Path(__file__).resolve().parent / "schemas" / "crds"
RELEASE = "demo"
NAMESPACE = "ml"
FULLNAME = f"{RELEASE}-gpu-predictor"

# Oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest one whose
# schemas kubernetes-validate ships.
MIN_KUBE_VERSION = "1.29"
KUBE_VERSIONS = (MIN_KUBE_VERSION, kv_utils.major_minor(kv_utils.latest_version()))

# apiVersion/kind -> vendored CRD file (the served version is picked by apiVersion).
CRD_FILES = {
    ("serving.kserve.io/v1beta1", "InferenceService"): (
        "serving.kserve.io_inferenceservices.yaml.gz"
    ),
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): "serving.kserve.io_servingruntimes.yaml.gz",
    ("serving.kserve.io/v1alpha1", "ClusterServingRuntime"): (
        "serving.kserve.io_clusterservingruntimes.yaml.gz"
    ),
    ("monitoring.coreos.com/v1", "PodMonitor"): "monitoring.coreos.com_podmonitors.yaml",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "monitoring.coreos.com_prometheusrules.yaml",
}
CORE_KINDS = {
    ("v1", "Pod"),
    ("v1", "Secret"),
    ("v1", "ConfigMap"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
    ("policy/v1", "PodDisruptionBudget"),
}

_INT_BOUNDS = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_YAML_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True)
class Rendered:
    """One render of the chart.

    Attributes:
        objects: every rendered Kubernetes object, hooks included, in template order.
        sources: the template each object came from (same order).
        notes: the rendered NOTES.txt.
    """

    objects: list[dict[str, Any]]
    sources: list[str]
    notes: str

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        """The objects of ``kind``."""
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str) -> dict[str, Any]:
        """The single object of ``kind`` (fails when there is not exactly one)."""
        found = self.of_kind(kind)
        assert len(found) == 1, f"expected one {kind}, got {len(found)}"
        return found[0]

    def kinds(self) -> set[str]:
        """The kinds rendered."""
        return {o["kind"] for o in self.objects}

    @property
    def isvc(self) -> dict[str, Any]:
        """The InferenceService."""
        return self.one("InferenceService")

    @property
    def predictor(self) -> dict[str, Any]:
        """``spec.predictor`` of the InferenceService."""
        predictor: dict[str, Any] = self.isvc["spec"]["predictor"]
        return predictor

    @property
    def container(self) -> dict[str, Any]:
        """The predictor container (``containers[0]``)."""
        container: dict[str, Any] = self.predictor["containers"][0]
        return container

    @property
    def env(self) -> dict[str, str]:
        """The predictor container's literal environment variables."""
        return {e["name"]: e["value"] for e in self.container.get("env", []) if "value" in e}

    @property
    def test_pod(self) -> dict[str, Any]:
        """The ``helm test`` pod."""
        pods = [
            o
            for o in self.of_kind("Pod")
            if o["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"
        ]
        assert len(pods) == 1, f"expected one helm test pod, got {len(pods)}"
        return pods[0]


@functools.cache
def chart() -> helm.Chart:
    """The chart, loaded once per test session."""
    return helm.Chart.load(str(CHART))


def render(
    values: Mapping[str, Any] | None = None,
    *,
    release: str = RELEASE,
    namespace: str = NAMESPACE,
) -> Rendered:
    """Render the chart as ``helm template`` would (schema validation included).

    Raises:
        helm_python.HelmValuesError: the values break values.schema.json.
        helm_python.HelmRenderError: a template failed (the chart's own checks use ``fail``).
    """
    manifests = chart().render(
        dict(values or {}), name=release, namespace=namespace, is_install=True
    )
    objects: list[dict[str, Any]] = []
    sources: list[str] = []
    notes = ""
    for path in sorted(manifests, key=_template_order):
        text = manifests[path]
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        for doc in yaml.load_all(text, Loader=_YAML_LOADER):
            if doc:
                objects.append(doc)
                sources.append(path)
    return Rendered(objects, sources, notes)


def _template_order(path: str) -> tuple[int, str]:
    # Helm's own install order for the kinds this chart renders; tests last.
    order = [
        "secret.yaml",
        "dashboard-configmap.yaml",
        "networkpolicy.yaml",
        "poddisruptionbudget.yaml",
        "inferenceservice.yaml",
        "podmonitor.yaml",
        "prometheusrule.yaml",
    ]
    name = path.rsplit("/", 1)[-1]
    return (order.index(name) if name in order else len(order), path)


def lint(values: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``helm lint --strict`` findings for ``values`` (data, not exceptions)."""
    return helm.lint(
        str(CHART),
        dict(values or {}),
        strict=True,
        namespace=NAMESPACE,
        kube_version=f"v{KUBE_VERSIONS[-1]}.0",
    )


def validate(obj: Mapping[str, Any]) -> list[str]:
    """Validate one rendered object; returns the validators it went through.

    Raises:
        AssertionError: the object is invalid, with the validator's message.
    """
    key = (obj.get("apiVersion"), obj.get("kind"))
    passed = [validate_metadata(obj)]
    if key in CORE_KINDS:
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(dict(obj), version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                where = ".".join(str(p) for p in exc.path)
                raise AssertionError(
                    f"{obj['kind']}/{obj['metadata']['name']} is invalid for Kubernetes "
                    f"{version}: {where}: {exc.message}"
                ) from None
            passed.append(f"kubernetes-validate {version} strict")
    elif key in CRD_FILES:
        if key == ("serving.kserve.io/v1beta1", "InferenceService"):
            passed += _validate_predictor_pod(obj)
        elif key[1] in ("ServingRuntime", "ClusterServingRuntime"):
            passed += _validate_pod(obj["spec"], f"{obj['metadata']['name']}-runtime")
        validator = crd_validator(*key)
        errors = sorted(validator.iter_errors(dict(obj)), key=lambda e: list(e.path))
        if errors:
            lines = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors[:5]]
            raise AssertionError(
                f"{obj['kind']}/{obj['metadata']['name']} breaks the {key[0]} CRD schema:\n  "
                + "\n  ".join(lines)
            )
        passed.append(f"CRD schema {CRD_FILES[key]}")
    else:
        raise AssertionError(f"no validator for {key}: add its schema to tests/chart_support.py")
    return passed


def _validate_predictor_pod(isvc: Mapping[str, Any]) -> list[str]:
    """Validate the pod KServe builds from ``spec.predictor`` as a core Pod.

    ``spec.predictor`` inlines a PodSpec next to KServe's own fields (replicas, scaling,
    labels...): its PodSpec fields must make a valid Pod for each Kubernetes version.
    """
    predictor = dict(isvc["spec"]["predictor"])
    if "model" in predictor:
        # The model form: KServe merges the model's container fields into the runtime's
        # container; validate them as that container (its image comes from the runtime).
        model = predictor.pop("model")
        fields = {k: v for k, v in model.items() if k in ("env", "resources", "args")}
        predictor["containers"] = [{"name": "kserve-container", "image": "runtime", **fields}]
    return _validate_pod(predictor, f"{isvc['metadata']['name']}-predictor")


def _validate_pod(holder: Mapping[str, Any], name: str) -> list[str]:
    """``holder``'s PodSpec fields must make a valid Pod for each Kubernetes version."""
    spec = {k: v for k, v in holder.items() if k in _pod_spec_fields()}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}
    passed = []
    for version in KUBE_VERSIONS:
        try:
            kubernetes_validate.validate(pod, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            raise AssertionError(
                f"the pod of {name} is invalid for Kubernetes {version}: {where}: {exc.message}"
            ) from None
        passed.append(f"pod spec: kubernetes-validate {version} strict")
    return passed


@functools.cache
def _pod_spec_fields() -> frozenset[str]:
    version = kv_utils.latest_version()
    definitions = kv_utils.schema_contents(
        f"kubernetes-json-schema/v{version}-local-strict/_definitions.json", version
    )
    return frozenset(definitions["$defs"]["io.k8s.api.core.v1.PodSpec"]["properties"])


def validate_metadata(obj: Mapping[str, Any]) -> str:
    """Check names, labels and annotation keys the way the API server does."""
    meta = obj["metadata"]
    name = meta["name"]
    assert len(name) <= 253, f"object name too long: {name!r}"
    assert _DNS_SUBDOMAIN.match(name), f"bad object name {name!r}"
    if "namespace" in meta:
        assert _DNS_LABEL.match(meta["namespace"]), f"bad namespace {meta['namespace']!r}"
    for key, value in meta.get("labels", {}).items():
        assert isinstance(value, str), f"label {key} of {name} is not a string: {value!r}"
        assert _qualified_name(key), f"bad label key {key!r} on {name}"
        assert value == "" or (len(value) <= 63 and _LABEL_NAME.match(value)), (
            f"bad label value {key}={value!r} on {name}"
        )
    for key, value in meta.get("annotations", {}).items():
        assert isinstance(value, str), f"annotation {key} of {name} is not a string"
        assert _qualified_name(key), f"bad annotation key {key!r} on {name}"
    return "metadata (names, labels, annotations)"


def _qualified_name(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        return False
    return len(name) <= 63 and bool(_LABEL_NAME.match(name))


# ---- CRD schemas -------------------------------------------------------------------------


def crd_path(filename: str) -> Path:
    """Path of a vendored CRD file."""
    return CRD_DIR / filename


def crd_bytes(filename: str) -> bytes:
    """Upstream bytes of a vendored CRD (decompressed when stored gzipped)."""
    data = crd_path(filename).read_bytes()
    return gzip.decompress(data) if filename.endswith(".gz") else data


def crd_sources() -> dict[str, dict[str, str]]:
    """SOURCES.txt entries by upstream file name: repo, tag, commit, path, bytes, sha256."""
    entries: dict[str, dict[str, str]] = {}
    for line in (CRD_DIR / "SOURCES.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        repo, *fields = line.split()
        entry = dict(f.split("=", 1) for f in fields)
        entry["repo"] = repo
        entries[entry["path"].rsplit("/", 1)[-1]] = entry
    return entries


def sha256(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


@functools.cache
def crd_validator(api_version: str, kind: str) -> jsonschema.protocols.Validator:
    """A JSON Schema validator for ``kind`` at ``api_version`` from its vendored CRD."""
    filename = CRD_FILES[(api_version, kind)]
    crd = yaml.load(crd_bytes(filename), Loader=_YAML_LOADER)  # noqa: S506 - a SafeLoader
    group, version = api_version.split("/")
    assert crd["spec"]["group"] == group
    assert crd["spec"]["names"]["kind"] == kind
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version and v["served"]]
    schema = openapi_to_jsonschema(served["schema"]["openAPIV3Schema"])
    properties = schema["properties"]
    properties["apiVersion"] = {"enum": [api_version]}
    properties["kind"] = {"enum": [kind]}
    properties["metadata"] = OBJECT_META
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata"})
    draft4 = jsonschema.Draft4Validator
    validator_class = jsonschema.validators.validator_for(schema, default=draft4)
    validator_class.check_schema(schema)
    validator: jsonschema.protocols.Validator = validator_class(schema)
    return validator


_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
OBJECT_META: dict[str, Any] = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "namespace": {"type": "string"},
        "labels": _STRING_MAP,
        "annotations": _STRING_MAP,
    },
}


def openapi_to_jsonschema(node: Mapping[str, Any]) -> dict[str, Any]:
    """Convert a CRD's OpenAPI v3 structural schema to JSON Schema (draft 4).

    ``x-kubernetes-int-or-string`` becomes integer-or-string, ``nullable`` adds ``null`` to
    the type, ``int32``/``int64`` formats become bounds, and an object with ``properties``
    but without ``additionalProperties`` or ``x-kubernetes-preserve-unknown-fields`` refuses
    unknown fields (the API server's strict field validation). Descriptions are dropped.
    """
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("description", "x-kubernetes-validations") or key.startswith("x-kubernetes-"):
            continue
        if key == "properties":
            out[key] = {name: openapi_to_jsonschema(sub) for name, sub in value.items()}
        elif key in ("items", "not") or (key == "additionalProperties" and isinstance(value, dict)):
            out[key] = openapi_to_jsonschema(value)
        elif key in ("anyOf", "allOf", "oneOf"):
            out[key] = [openapi_to_jsonschema(sub) for sub in value]
        else:
            out[key] = value
    if "pattern" in out:
        out["pattern"] = _python_regex(out["pattern"])
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    fmt = out.get("format")
    if out.get("type") == "integer" and fmt in _INT_BOUNDS:
        out.pop("format")
        out["minimum"], out["maximum"] = _INT_BOUNDS[fmt]
    preserve = node.get("x-kubernetes-preserve-unknown-fields", False)
    if "properties" in out and "additionalProperties" not in out and not preserve:
        out["additionalProperties"] = False
    if node.get("x-kubernetes-embedded-resource"):
        out.setdefault("properties", {}).update(
            {"apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {}}
        )
    return out


def _python_regex(pattern: str) -> str:
    """RE2 (Go) accepts inline flags after ``^``, Python only at the start: move them."""
    return re.sub(r"^\^\(\?([a-z]+)\)", r"(?\1)^", pattern)


# ---- values ------------------------------------------------------------------------------


def schema_leaves(schema: Mapping[str, Any], prefix: str = "") -> Iterator[str]:
    """Dotted paths of the chart's own values: leaves of the objects the schema closes.

    An object declared with ``properties`` and ``additionalProperties: false`` is the chart's
    own and is walked into; anything else (scalars, lists, free-form maps such as
    ``nodeSelector``) is a leaf.
    """
    for name, sub in schema.get("properties", {}).items():
        path = f"{prefix}{name}"
        if name == "global" and not prefix:
            continue
        if sub.get("properties") and sub.get("additionalProperties") is False:
            yield from schema_leaves(sub, f"{path}.")
        elif sub.get("type") == "object" and sub.get("additionalProperties") is False:
            continue  # a closed object with no keys yet (e.g. metrics.rules.thresholds)
        else:
            yield path


def lookup(values: Mapping[str, Any], dotted: str) -> Any:
    """``values["a"]["b"]`` for ``"a.b"``."""
    node: Any = values
    for part in dotted.split("."):
        node = node[part]
    return node

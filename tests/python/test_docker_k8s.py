"""docker/k8s/ against a real Kubernetes API server (etcd + kube-apiserver v1.20.2, tests/python/kube_api.py):

- every object in every manifest (and secret.yaml.example) is checked against the server's own OpenAPI schema
  (unknown fields, wrong types, missing required fields: v1.20 would drop unknown fields silently on create);
- every object is then created for real, so the server's validation and admission run on it;
- the RBAC is exercised as the pool manager's service account (impersonated): what the Kubernetes node provider
  does (read the node Deployment, get/patch/update its scale, get/list/watch pods, patch a pod's deletion cost)
  succeeds, and what it must not do (delete pods, read Secrets, scale another Deployment) is refused with 403.

There is no kubelet or controller manager: no pod runs and nothing here proves the images start in a cluster."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from kube_api import KubeAPI, kube_api  # noqa: F401  (kube_api: the fixture)

yaml = pytest.importorskip("yaml", reason="PyYAML is a dev dependency (pyproject [dev])")

K8S = Path(__file__).resolve().parents[2] / "docker" / "k8s"
NS = "fargpu"
SA_USER = f"system:serviceaccount:{NS}:fargpu-pool-manager"
QUANTITY = "io.k8s.apimachinery.pkg.api.resource.Quantity"


def manifests() -> list[tuple[str, dict[str, Any]]]:
    files = sorted(K8S.glob("*.yaml")) + [K8S / "secret.yaml.example"]
    out = []
    for f in files:
        for doc in yaml.safe_load_all(f.read_text()):
            if doc:
                out.append((f"{f.name}:{doc['kind']}/{doc['metadata']['name']}", doc))
    return out


def schema_errors(obj: Any, schema: dict[str, Any], defs: dict[str, Any], path: str) -> list[str]:
    """Checks `obj` against an OpenAPI v2 schema: types, unknown properties, required properties."""
    ref = schema.get("$ref", "")
    if ref:
        name = ref.rsplit("/", 1)[-1]
        if name == QUANTITY:  # a string in the schema; the API accepts numbers too ("nvidia.com/gpu: 1")
            ok = isinstance(obj, (str, int, float)) and not isinstance(obj, bool)
            return [] if ok else [f"{path}: not a quantity"]
        schema = defs[name]
    if schema.get("format") == "int-or-string":
        return [] if isinstance(obj, (str, int)) and not isinstance(obj, bool) else [f"{path}: not an int or string"]
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        if not isinstance(obj, dict):
            return [f"{path}: expected an object, got {type(obj).__name__}"]
        errors = [f"{path}: missing required field {r!r}" for r in schema.get("required", []) if r not in obj]
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, value in obj.items():
            if key in props:
                errors += schema_errors(value, props[key], defs, f"{path}.{key}")
            elif isinstance(extra, dict):
                errors += schema_errors(value, extra, defs, f"{path}.{key}")
            elif props:
                errors.append(f"{path}: unknown field {key!r}")
        return errors
    if kind == "array":
        if not isinstance(obj, list):
            return [f"{path}: expected a list, got {type(obj).__name__}"]
        return [e for i, v in enumerate(obj) for e in schema_errors(v, schema.get("items", {}), defs, f"{path}[{i}]")]
    expected = {"string": str, "integer": int, "number": (int, float), "boolean": bool}.get(kind or "")
    if expected is not None and (not isinstance(obj, expected) or (kind != "boolean" and isinstance(obj, bool))):
        return [f"{path}: expected {kind}, got {type(obj).__name__} {obj!r}"]
    return []


@pytest.fixture(scope="module")
def openapi(kube_api: KubeAPI) -> dict[str, Any]:  # noqa: F811
    status, spec = kube_api.request("GET", "/openapi/v2")
    assert status == 200, spec
    return dict(spec["definitions"])


def kind_schema(defs: dict[str, Any], api_version: str, kind: str) -> dict[str, Any]:
    group, _, version = api_version.rpartition("/")
    for d in defs.values():
        for gvk in d.get("x-kubernetes-group-version-kind", []):
            if (gvk["group"], gvk["version"], gvk["kind"]) == (group, version, kind):
                return dict(d)
    raise AssertionError(f"the API server has no schema for {api_version} {kind}")


def resource_path(api: KubeAPI, obj: dict[str, Any]) -> str:
    """The collection URL for obj, from the server's discovery (plural name, namespaced or not)."""
    av = obj["apiVersion"]
    base = f"/api/{av}" if "/" not in av else f"/apis/{av}"
    status, disc = api.request("GET", base)
    assert status == 200, disc
    res = next(r for r in disc["resources"] if r["kind"] == obj["kind"] and "/" not in r["name"])
    ns = obj["metadata"].get("namespace")
    return f"{base}/namespaces/{ns}/{res['name']}" if res["namespaced"] else f"{base}/{res['name']}"


def test_manifests_match_the_api_schema(openapi: dict[str, Any]) -> None:
    objs = manifests()
    kinds = {o["kind"] for _, o in objs}
    assert {"Namespace", "Deployment", "Service", "ServiceAccount", "Role", "RoleBinding", "Secret",
            "PersistentVolumeClaim"} <= kinds
    errors = [e for name, o in objs for e in schema_errors(o, kind_schema(openapi, o["apiVersion"], o["kind"]),
                                                          openapi, name)]
    assert errors == []


def test_schema_check_catches_mistakes(openapi: dict[str, Any]) -> None:
    """The check above can fail: a misspelt field, a wrong type and a missing required field are each reported."""
    node = next(o for n, o in manifests() if n.startswith("node.yaml:Deployment"))
    bad = copy.deepcopy(node)
    bad["spec"]["replica"] = 2
    bad["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "seventy-one-hundred"
    del bad["spec"]["selector"]
    errors = schema_errors(bad, kind_schema(openapi, "apps/v1", "Deployment"), openapi, "bad")
    assert any("unknown field 'replica'" in e for e in errors), errors
    assert any("containerPort: expected integer" in e for e in errors), errors
    assert any("missing required field 'selector'" in e for e in errors), errors


def test_manifests_are_accepted_and_rbac_fits_the_node_provider(kube_api: KubeAPI) -> None:  # noqa: F811
    objs = manifests()
    objs.sort(key=lambda x: x[1]["kind"] != "Namespace")
    for name, o in objs:
        status, body = kube_api.request("POST", resource_path(kube_api, o), o)
        assert status == 201, f"{name}: {status} {body}"

    # A pod as the node Deployment's ReplicaSet would make it (no controller manager runs here to make it).
    status, dep = kube_api.request("GET", f"/apis/apps/v1/namespaces/{NS}/deployments/fargpu-node")
    assert status == 200
    labels = dep["spec"]["template"]["metadata"]["labels"]
    meta = {"name": "fargpu-node-abc12", "namespace": NS, "labels": labels}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": dep["spec"]["template"]["spec"]}
    status, body = kube_api.request("POST", f"/api/v1/namespaces/{NS}/pods", pod)
    assert status == 201, body
    assert body["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"

    sa = {"Impersonate-User": SA_USER}
    apps = f"/apis/apps/v1/namespaces/{NS}/deployments"
    merge = "application/merge-patch+json"
    selector = "app.kubernetes.io%2Fname%3Dfargpu-node"

    def as_sa(method: str, path: str, body: Any = None, ctype: str = "application/json") -> tuple[int, Any]:
        return kube_api.request(method, path, body, ctype, headers=sa)

    # What the provider does.
    assert as_sa("GET", f"{apps}/fargpu-node")[0] == 200
    status, scale = as_sa("GET", f"{apps}/fargpu-node/scale")
    assert status == 200 and scale["spec"]["replicas"] == 1, scale
    status, scale = as_sa("PATCH", f"{apps}/fargpu-node/scale", {"spec": {"replicas": 2}}, merge)
    assert status == 200 and scale["spec"]["replicas"] == 2, scale
    scale["spec"]["replicas"] = 0
    status, scale = as_sa("PUT", f"{apps}/fargpu-node/scale", scale)
    assert status == 200 and scale["spec"].get("replicas", 0) == 0, scale  # 0 is omitted
    assert kube_api.request("GET", f"{apps}/fargpu-node")[1]["spec"].get("replicas", 0) == 0
    status, pods = as_sa("GET", f"/api/v1/namespaces/{NS}/pods?labelSelector={selector}")
    assert status == 200 and [p["metadata"]["name"] for p in pods["items"]] == ["fargpu-node-abc12"]
    assert as_sa("GET", f"/api/v1/namespaces/{NS}/pods?watch=true&timeoutSeconds=1")[0] == 200
    cost = {"metadata": {"annotations": {"controller.kubernetes.io/pod-deletion-cost": str(-(2**31))}}}
    status, patched = as_sa("PATCH", f"/api/v1/namespaces/{NS}/pods/fargpu-node-abc12", cost, merge)
    assert status == 200, patched
    assert patched["metadata"]["annotations"]["controller.kubernetes.io/pod-deletion-cost"] == str(-(2**31))

    # What it must not do.
    refused = [
        ("DELETE", f"/api/v1/namespaces/{NS}/pods/fargpu-node-abc12", None),
        ("GET", f"/api/v1/namespaces/{NS}/secrets/fargpu-keys", None),
        ("GET", f"{apps}/fargpu-redis", None),
        ("PATCH", f"{apps}/fargpu-redis/scale", {"spec": {"replicas": 3}}),
        ("PATCH", f"{apps}/fargpu-node", {"spec": {"replicas": 3}}),
        ("GET", "/api/v1/namespaces/default/pods", None),
    ]
    for method, path, body in refused:
        status, _ = as_sa(method, path, body, merge)
        assert status == 403, f"{method} {path} as the pool manager's service account: {status}, expected 403"

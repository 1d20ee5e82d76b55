"""Validate the rendered Kubernetes manifests (`kubectl kustomize deploy/k8s`) offline.

    python .ci/check-k8s.py RENDERED.yaml [--k8s-version 1.29 --k8s-version 1.37]

1. Every built-in kind against the Kubernetes OpenAPI schemas shipped in PyPI's
   kubernetes-validate, strictly (unknown fields fail), for each version given. A kind it
   has no schema for fails too, rather than being skipped in silence.
2. KEDA's ScaledObject (a CRD the package does not know) against the subset of its schema
   in deploy/k8s/schemas/.
3. What no schema sees: each ScaledObject scales a Deployment that exists, on that
   worker's own queue `render.<alias>` and backlog metric; every worker alias is in
   deploy/k8s/models.toml; every PodDisruptionBudget selects pods; GPU workers request a
   GPU and have a long termination grace; the API is ready on /readyz; ConfigMaps
   referenced exist; the metrics port matches IMGFARM_METRICS_PORT.
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from kubernetes_validate import utils as kv

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
# Secrets created outside the repository (documented in deploy/k8s/secrets.example.env).
EXTERNAL_SECRETS = {"imgfarm-secrets"}
# Above the default lease (300 s): the batch in flight finishes before SIGKILL.
MIN_GPU_GRACE_SECONDS = 300

errors: list[str] = []


def fail(message: str) -> None:
    errors.append(message)


def name_of(doc: dict[str, Any]) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


def pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return doc["spec"]["template"]["spec"]  # type: ignore[no-any-return]
    return None


def validate_schemas(docs: list[dict[str, Any]], versions: list[str]) -> None:
    keda = json.loads((K8S / "schemas" / "scaledobject-keda.sh-v1alpha1.json").read_text())
    for doc in docs:
        if doc["apiVersion"].startswith("keda.sh/"):
            if doc["kind"] != "ScaledObject":
                fail(f"{name_of(doc)}: no schema here for KEDA kind {doc['kind']}")
                continue
            for error in jsonschema.Draft202012Validator(keda).iter_errors(doc):
                path = ".".join(str(p) for p in error.absolute_path)
                fail(f"{name_of(doc)}: {path}: {error.message}")
            continue
        for version in versions:
            try:
                kv.validate(doc, version, strict=True)
            except kv.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                fail(f"{name_of(doc)} (Kubernetes {version}): {path}: {e.message}")
            except kv.SchemaNotFoundError as e:
                fail(f"{name_of(doc)}: {e.message}")


def worker_alias(deployment: dict[str, Any]) -> str | None:
    args = deployment["spec"]["template"]["spec"]["containers"][0].get("args", [])
    if args[:1] == ["worker"] and "--model" in args:
        return str(args[args.index("--model") + 1])
    return None


def check_scaling(docs: list[dict[str, Any]]) -> None:
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    registry = tomllib.loads((K8S / "models.toml").read_text()).get("models", {})
    scaled = set()
    for so in (d for d in docs if d["kind"] == "ScaledObject"):
        target = so["spec"]["scaleTargetRef"]["name"]
        deployment = deployments.get(target)
        if deployment is None:
            fail(f"{name_of(so)} scales Deployment {target!r}, which is not in the render")
            continue
        scaled.add(target)
        alias = worker_alias(deployment)
        if alias is None:
            fail(f"{name_of(so)}: Deployment {target} is not a `worker --model ALIAS`")
            continue
        for trigger in so["spec"]["triggers"]:
            meta = trigger["metadata"]
            if trigger["type"] == "redis" and meta.get("listName") != f"render.{alias}":
                fail(
                    f"{name_of(so)}: redis listName {meta.get('listName')!r}, "
                    f"but {target} consumes render.{alias}"
                )
            if trigger["type"] == "prometheus" and f'model="{alias}"' not in meta["query"]:
                fail(f"{name_of(so)}: prometheus query does not select model={alias!r}")
        if "replicas" in deployment["spec"]:
            fail(f"{target}: set no `replicas` on a Deployment KEDA scales (they would fight)")
    for name, deployment in deployments.items():
        alias = worker_alias(deployment)
        if alias is None:
            continue
        if alias not in registry:
            fail(f"{name}: model {alias!r} is not in deploy/k8s/models.toml")
        if name not in scaled:
            fail(f"{name}: GPU worker without a ScaledObject")
        spec = deployment["spec"]["template"]["spec"]
        limits = spec["containers"][0].get("resources", {}).get("limits", {})
        if str(limits.get("nvidia.com/gpu")) != "1":
            fail(f"{name}: a render worker needs limits nvidia.com/gpu: 1")
        if spec.get("terminationGracePeriodSeconds", 30) < MIN_GPU_GRACE_SECONDS:
            fail(f"{name}: terminationGracePeriodSeconds below {MIN_GPU_GRACE_SECONDS}")


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def check_selectors_and_refs(docs: list[dict[str, Any]]) -> None:
    pods = [
        (name_of(d), d["spec"]["template"]["metadata"].get("labels", {}))
        for d in docs
        if d["kind"] == "Deployment"
    ]
    for pdb in (d for d in docs if d["kind"] == "PodDisruptionBudget"):
        selector = pdb["spec"]["selector"]["matchLabels"]
        matched = [n for n, labels in pods if selects(selector, labels)]
        if len(matched) != 1:
            fail(f"{name_of(pdb)} selects {matched or 'no Deployment'}; expected exactly one")
    config_maps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    for doc in docs:
        spec = pod_spec(doc)
        if spec is None:
            continue
        refs = [v["configMap"]["name"] for v in spec.get("volumes", []) if "configMap" in v]
        for container in spec["containers"]:
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    refs.append(source["configMapRef"]["name"])
                if "secretRef" in source and source["secretRef"]["name"] not in EXTERNAL_SECRETS:
                    fail(f"{name_of(doc)}: Secret {source['secretRef']['name']!r} is unknown")
        for ref in refs:
            if ref not in config_maps:
                fail(f"{name_of(doc)}: ConfigMap {ref!r} is not in the render")
    config = next((c for n, c in config_maps.items() if n.startswith("imgfarm-config")), None)
    port = str((config or {}).get("data", {}).get("IMGFARM_METRICS_PORT", ""))
    for doc in docs:
        spec = pod_spec(doc)
        for container in (spec or {}).get("containers", []):
            for p in container.get("ports", []):
                if p.get("name") == "metrics" and str(p["containerPort"]) != port:
                    fail(
                        f"{name_of(doc)}: metrics port {p['containerPort']} but "
                        f"IMGFARM_METRICS_PORT={port or '(unset)'}"
                    )
            annotations = doc["spec"]["template"]["metadata"].get("annotations", {})
            scrape_port = annotations.get("prometheus.io/port")
            declared = {str(p["containerPort"]) for p in container.get("ports", [])}
            if scrape_port and scrape_port not in declared:
                fail(f"{name_of(doc)}: scraped on port {scrape_port}, which it does not expose")
    api = next(
        (d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "api"), None
    )
    probe = (api or {}).get("spec", {}).get("template", {}).get("spec", {})
    probe = (probe.get("containers") or [{}])[0].get("readinessProbe", {})
    if probe.get("httpGet", {}).get("path") != "/readyz":
        fail("Deployment/api: readinessProbe must be GET /readyz")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("rendered", type=Path)
    parser.add_argument("--k8s-version", action="append", dest="versions")
    args = parser.parse_args()
    versions = args.versions or [kv.latest_version()]
    docs = [d for d in yaml.safe_load_all(args.rendered.read_text()) if d]
    if not docs:
        fail("the render is empty")
    validate_schemas(docs, versions)
    check_scaling(docs)
    check_selectors_and_refs(docs)
    for error in errors:
        sys.stderr.write(f"ERROR {error}\n")
    if errors:
        return 1
    kinds: dict[str, int] = {}
    for doc in docs:
        kinds[doc["kind"]] = kinds.get(doc["kind"], 0) + 1
    summary = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
    sys.stdout.write(
        f"    {len(docs)} resources valid against Kubernetes {', '.join(versions)}: {summary}\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`k8s`: a JobSet manifest (one indexed Job, one pod per host) for GKE TPU or GPU node pools.

Pod i gets GPTJAX_PROCESS_ID from its completion index and reaches process 0 through the
JobSet's headless service, so gptjax.distributed connects them without cluster detection.
"""

from __future__ import annotations

import subprocess
import sys

import yaml

from gptjax.launch.common import Job, record, require_shared_run_dir
from gptjax.runtime import distributed

PORT = 8476


def add_arguments(p) -> None:
    p.add_argument("--image", required=True, help="container image with gptjax installed")
    p.add_argument("--hosts", type=int, default=1, help="pods (JAX processes), one per host")
    p.add_argument("--gpus-per-host", type=int, default=0, help="nvidia.com/gpu per pod")
    p.add_argument("--tpu-chips-per-host", type=int, default=0, help="google.com/tpu per pod")
    p.add_argument("--tpu-accelerator", default=None, help="node selector cloud.google.com/gke-tpu-accelerator")
    p.add_argument("--tpu-topology", default=None, help="node selector cloud.google.com/gke-tpu-topology")
    p.add_argument("--namespace", default="default", help="Kubernetes namespace of the JobSet")
    p.add_argument("--name", default="gptjax", help="JobSet name (DNS-1123)")


def manifest(job: Job, args, name: str) -> dict:
    coordinator = f"{name}-workers-0-0.{name}:{PORT}"
    env = [{"name": distributed.ENV_COORDINATOR, "value": coordinator},
           {"name": distributed.ENV_NUM, "value": str(args.hosts)},
           {"name": distributed.ENV_ID, "valueFrom": {"fieldRef": {
               "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}}]
    limits = {}
    if args.gpus_per_host:
        limits["nvidia.com/gpu"] = args.gpus_per_host
    if args.tpu_chips_per_host:
        limits["google.com/tpu"] = args.tpu_chips_per_host
    pod = {"restartPolicy": "Never", "subdomain": name,
           "containers": [{"name": "gptjax", "image": args.image, "command": job.train_args("python"),
                           "env": env, "ports": [{"containerPort": PORT}], "resources": {"limits": limits}}]}
    selectors = {k: v for k, v in (("cloud.google.com/gke-tpu-accelerator", args.tpu_accelerator),
                                   ("cloud.google.com/gke-tpu-topology", args.tpu_topology)) if v}
    if selectors:
        pod["nodeSelector"] = selectors
    return {"apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet",
            "metadata": {"name": name, "namespace": args.namespace},
            "spec": {"network": {"enableDNSHostnames": True},
                     "replicatedJobs": [{"name": "workers", "replicas": 1, "template": {"spec": {
                         "parallelism": args.hosts, "completions": args.hosts, "completionMode": "Indexed",
                         "backoffLimit": 0, "template": {"spec": pod}}}}]}}


def launch(jobs: list[Job], args) -> int:
    if args.hosts > 1:
        require_shared_run_dir(jobs, "k8s")
    # One JobSet per sweep member, with distinct names (the coordinator's DNS name follows).
    names = [args.name] if len(jobs) == 1 else [f"{args.name}-{i:03d}" for i in range(len(jobs))]
    docs = [manifest(job, args, name) for job, name in zip(jobs, names)]
    text = yaml.safe_dump_all(docs, sort_keys=False)
    if args.dry_run:
        print(text, end="")
        return 0
    for job in jobs:
        record(job, "k8s", text)
    out = subprocess.run(["kubectl", "apply", "-f", "-"], input=text, text=True)
    if out.returncode != 0:
        print("gptjax launch k8s: kubectl apply failed", file=sys.stderr)
    return out.returncode

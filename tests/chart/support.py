"""Helpers for the Helm chart's tests (not fixtures): where the chart and its values files
are, helm and kubectl (from ``.tools/bin``, which ``.ci/get-helm`` fills, else ``PATH``), and
picking objects out of a render."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from tests.support import REPO

CHART = REPO / "charts" / "kargo-bitbucket"
VALUES = Path(__file__).parent / "values"
VALUES_FILES = sorted(VALUES.glob("*.yaml"))


class Helm:
    """The helm binary, with a kubeconfig for the commands that talk to a cluster."""

    def __init__(self, binary: str, kubeconfig: Path | None = None) -> None:
        self.binary = binary
        self.kubeconfig = kubeconfig

    def with_kubeconfig(self, kubeconfig: Path) -> Helm:
        return Helm(self.binary, kubeconfig)

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        extra = ["--kubeconfig", str(self.kubeconfig)] if self.kubeconfig else []
        result = subprocess.run(
            [self.binary, *args, *extra], capture_output=True, text=True, timeout=120
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"helm {' '.join(args)} exited {result.returncode}:\n{result.stderr}"
            )
        return result

    def template(
        self,
        values: Path | None = None,
        *settings: str,
        release: str = "kargo-bitbucket",
        namespace: str = "kargo",
    ) -> str:
        """``helm template`` of the chart; ``settings`` are ``--set``/``--set-json`` pairs."""
        args = ["template", release, str(CHART), "--namespace", namespace]
        if values is not None:
            args += ["--values", str(values)]
        return self.run(*args, *settings).stdout


def objects(rendered: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """The one object of ``kind``; none or several is a failure."""
    (found,) = of_kind(docs, kind)
    return found


def kubectl_run(
    kubectl: str, kubeconfig: Path, args: Sequence[str], stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [kubectl, "--kubeconfig", str(kubeconfig), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )

"""Kargo's kinds as lightkube resources, the ones the receiver watches and patches."""

from __future__ import annotations

from typing import Any

from lightkube.generic_resource import create_global_resource, create_namespaced_resource

GROUP, VERSION = "kargo.akuity.io", "v1alpha1"
RESOURCES: dict[str, Any] = {
    "Warehouse": create_namespaced_resource(GROUP, VERSION, "Warehouse", "warehouses"),
    "Promotion": create_namespaced_resource(GROUP, VERSION, "Promotion", "promotions"),
    "ProjectConfig": create_namespaced_resource(GROUP, VERSION, "ProjectConfig", "projectconfigs"),
    "ClusterConfig": create_global_resource(GROUP, VERSION, "ClusterConfig", "clusterconfigs"),
}

"""End-to-end lab: real dockerd engines (20.10 and 28.5) and the driver in throwaway namespaces.

Nothing touches the host's network namespace; see /work/shared/reference/LAB.md.
"""

from .assets import build_busybox_tar, ensure_sid_tar
from .driver import DriverProcess, driver_available
from .engine import DOCKER_CLIS, ENGINE_KINDS, Engine
from .etcd import EtcdCluster
from .inspection import Link, iptables_save, links, mounts_under, netns_list
from .lab import Lab, LabSession
from .multihost import (
    HandVxlan,
    HostNode,
    MultiHost,
    MultiHostLab,
    VxlanEnd,
    build_hand_vxlan,
    df_ping,
    fdb_map,
    neigh_map,
    overlay_driver_args,
)
from .netns import Netns, add_bridge, link_veth
from .plugin_image import PLUGIN_NAME, PluginImage, engine_path, plugin_socket
from .proc import LabError, pid_alive, pids_alive, pids_in_namespace, run, wait_pids
from .topology import Lan, Outside, connect_lan, connect_outside

__all__ = [
    "DOCKER_CLIS",
    "ENGINE_KINDS",
    "PLUGIN_NAME",
    "DriverProcess",
    "Engine",
    "EtcdCluster",
    "HandVxlan",
    "HostNode",
    "Lab",
    "LabError",
    "LabSession",
    "Lan",
    "Link",
    "MultiHost",
    "MultiHostLab",
    "Netns",
    "Outside",
    "PluginImage",
    "VxlanEnd",
    "add_bridge",
    "build_busybox_tar",
    "build_hand_vxlan",
    "connect_lan",
    "connect_outside",
    "df_ping",
    "driver_available",
    "engine_path",
    "ensure_sid_tar",
    "fdb_map",
    "iptables_save",
    "link_veth",
    "links",
    "mounts_under",
    "neigh_map",
    "netns_list",
    "overlay_driver_args",
    "pid_alive",
    "pids_alive",
    "pids_in_namespace",
    "plugin_socket",
    "run",
    "wait_pids",
]

"""labkit: containers built by hand from Linux namespaces and cgroups, for the Docker Deep Dive Lab.

Read it next to the notebooks: each module is one concern -
host (what this machine can do), namespaces (isolation), cgroups (limits), net (veth and bridges),
rootfs (root filesystems and image layers), container (all of it together), engine (a Docker API),
vm (a real virtual machine to compare with), monitor and live (watching limits bite), cleanup
(leaving the machine as we found it).
"""
__version__ = "0.1.0"

"""labkit's OCI runtime: runc's command line, so the real Docker can run containers with labkit's code.

    dockerd -> containerd -> containerd-shim-runc-v2 -> labkit-runtime create/start/state/kill/delete

`labkit-runtime` (labkit.runtime.cli) is registered in /etc/docker/daemon.json as the runtime
`labkit`; `docker run --runtime labkit ...` then reaches the kernel through labkit.namespaces,
labkit.cgroups, labkit.rootfs and labkit.capabilities instead of runc. docs/runtime-contract.md
says exactly how the shim calls a runtime. Nothing is imported here: each verb loads only its module.
"""

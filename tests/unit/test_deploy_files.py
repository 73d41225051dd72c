"""The classroom's deployment files (deploy/): the hub config applies the isolation it promises,
refuses what it cannot do safely, and the Helm values select Kata and deny egress."""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from traitlets.config import Config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def hub_config(monkeypatch, **env) -> Config:
    """deploy/jupyterhub_config.py executed as JupyterHub does: get_config() hands it a Config."""
    for name in [n for n in os.environ if n.startswith(("LABKIT_HUB", "LABKIT_RUNTIME"))]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config = Config()
    source = (DEPLOY / "jupyterhub_config.py").read_text()
    exec(compile(source, "jupyterhub_config.py", "exec"), {"get_config": lambda: config})
    return config


def test_each_learner_gets_limits_volumes_and_a_private_cgroup_namespace(monkeypatch):
    c = hub_config(monkeypatch, LABKIT_HUB_PASSWORD="rehearsal")
    spawner = c.DockerSpawner
    assert spawner.cpu_limit == 1.0 and spawner.mem_limit == "2G"
    host = spawner.extra_host_config
    assert host["pids_limit"] > 0 and host["privileged"] is True
    assert host["cgroupns"] == "private" and "runtime" not in host     # runc: dockerd's default
    assert spawner.post_start_cmd == "ip route del default"             # no route out of the network
    assert set(spawner.volumes.values()) == {"/opt/labkit/notebooks", "/var/lib/labkit", "/var/lib/docker"}
    assert all("{username}" in name for name in spawner.volumes)
    assert spawner.cmd == ["labkit", "lab", "leaf", "--", "jupyterhub-singleuser", "--allow-root"]
    assert c.JupyterHub.bind_url.startswith("http://127.0.0.1:")
    assert c.JupyterHub.hub_ip != "0.0.0.0"
    assert c.ConfigurableHTTPProxy.api_url.startswith("http://127.0.0.1:")
    assert spawner.name_template == "classroom-learner-{username}"


def test_the_names_and_ports_move_but_the_proxy_api_stays_on_loopback(monkeypatch):
    c = hub_config(monkeypatch, LABKIT_HUB_PASSWORD="x", LABKIT_HUB_PREFIX="labkit-hubtest-1",
                   LABKIT_HUB_PORT="18081", LABKIT_HUB_PROXY_API="http://127.0.0.1:18001")
    assert c.DockerSpawner.name_template == "labkit-hubtest-1-learner-{username}"
    assert all(name.startswith("labkit-hubtest-1-") for name in c.DockerSpawner.volumes)
    assert c.JupyterHub.hub_port == 18081 and c.ConfigurableHTTPProxy.api_url == "http://127.0.0.1:18001"
    with pytest.raises(SystemExit, match="LABKIT_HUB_PROXY_API"):
        hub_config(monkeypatch, LABKIT_HUB_PASSWORD="x", LABKIT_HUB_PROXY_API="http://0.0.0.0:8001")


def test_the_runtime_is_one_setting_and_unknown_ones_are_refused(monkeypatch):
    c = hub_config(monkeypatch, LABKIT_HUB_PASSWORD="x", LABKIT_RUNTIME="kata")
    assert c.DockerSpawner.extra_host_config["runtime"] == "kata"
    with pytest.raises(SystemExit, match="LABKIT_RUNTIME"):
        hub_config(monkeypatch, LABKIT_HUB_PASSWORD="x", LABKIT_RUNTIME="gvisor")


def test_a_public_address_without_tls_or_a_missing_password_is_refused(monkeypatch):
    with pytest.raises(SystemExit, match="LABKIT_HUB_TLS_CERT"):
        hub_config(monkeypatch, LABKIT_HUB_PASSWORD="x", LABKIT_HUB_URL="http://0.0.0.0:8000")
    with pytest.raises(SystemExit, match="LABKIT_HUB_PASSWORD"):
        hub_config(monkeypatch)
    c = hub_config(monkeypatch, LABKIT_HUB_PASSWORD="x", LABKIT_HUB_URL="https://0.0.0.0:443",
                   LABKIT_HUB_TLS_CERT="/etc/ssl/hub.crt", LABKIT_HUB_TLS_KEY="/etc/ssl/hub.key")
    assert c.JupyterHub.ssl_cert == "/etc/ssl/hub.crt"


def test_helm_values_select_kata_deny_egress_and_prepull():
    values = yaml.safe_load((DEPLOY / "helm-values.yaml").read_text())
    user = values["singleuser"]
    assert user["extraPodConfig"]["runtimeClassName"] == "kata"
    assert user["cmd"] == ["labkit", "lab", "leaf", "--", "jupyterhub-singleuser", "--allow-root"]
    policy = user["networkPolicy"]
    assert policy["enabled"] and policy["egress"] == [] and not any(policy["egressAllowRules"].values())
    mounts = {m["mountPath"] for m in user["storage"]["extraVolumeMounts"]}
    assert mounts == {"/var/lib/labkit", "/var/lib/docker"} and user["storage"]["type"] == "dynamic"
    assert values["prePuller"]["hook"]["enabled"] and values["prePuller"]["continuous"]["enabled"]
    assert values["hub"]["config"]["KubeSpawner"]["container_security_context"]["privileged"] is True
    runtime_class = yaml.safe_load((DEPLOY / "kata" / "runtimeclass.yaml").read_text())
    assert runtime_class["kind"] == "RuntimeClass" and runtime_class["metadata"]["name"] == "kata"
    assert "privileged_without_host_devices = true" in (DEPLOY / "kata" / "containerd-kata.toml").read_text()


# No helm here, and the Zero to JupyterHub chart (with its values.schema.json) comes from a Helm
# repository, not from PyPI or npm: so no `helm template` and no schema validation in the suite. What
# runs instead is this structural check. Every key path the values set, each one looked up in the
# chart's values.schema.yaml (chart 4.x, JupyterHub 5) when it was added - the schema there sets
# additionalProperties: false, so a key it does not list makes `helm install` fail. A new key must be
# checked there and added here. hub.config.* is free-form (traitlets), so it stops at the class.
CHART_KEY_PATHS = {
    "cull.enabled", "cull.timeout", "ingress.enabled", "proxy.service.type",
    "prePuller.continuous.enabled", "prePuller.hook.enabled",
    "hub.config.Authenticator", "hub.config.DummyAuthenticator", "hub.config.JupyterHub", "hub.config.KubeSpawner",
    "singleuser.allowPrivilegeEscalation", "singleuser.cloudMetadata.blockWithIptables", "singleuser.cmd",
    "singleuser.cpu.guarantee", "singleuser.cpu.limit", "singleuser.memory.guarantee", "singleuser.memory.limit",
    "singleuser.defaultUrl", "singleuser.extraPodConfig.runtimeClassName", "singleuser.fsGid", "singleuser.uid",
    "singleuser.image.name", "singleuser.image.tag", "singleuser.startTimeout",
    "singleuser.networkPolicy.enabled", "singleuser.networkPolicy.egress",
    *(f"singleuser.networkPolicy.egressAllowRules.{rule}" for rule in (
        "cloudMetadataServer", "dnsPortsCloudMetadataServer", "dnsPortsKubeSystemNamespace",
        "dnsPortsPrivateIPs", "nonPrivateIPs", "privateIPs")),
    "singleuser.storage.type", "singleuser.storage.capacity", "singleuser.storage.homeMountPath",
    "singleuser.storage.dynamic.subPath", "singleuser.storage.extraVolumeMounts",
}


def key_paths(values: dict, prefix: str = ""):
    for key, value in values.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict) and not path.startswith("hub.config."):
            yield from key_paths(value, path)
        else:
            yield path


def test_helm_values_use_only_keys_and_types_the_chart_accepts():
    values = yaml.safe_load((DEPLOY / "helm-values.yaml").read_text())
    unknown = set(key_paths(values)) - CHART_KEY_PATHS
    assert not unknown, f"keys not checked against the chart's values.schema.yaml: {sorted(unknown)}"
    user = values["singleuser"]
    # the types the chart's schema gives these (a wrong one fails helm's validation, too)
    assert isinstance(user["cpu"]["limit"], (int, float)) and isinstance(user["cpu"]["guarantee"], (int, float))
    quantity = r"^\d+(\.\d+)?[KMGT]i?$"
    assert all(re.match(quantity, str(user["memory"][k])) for k in ("limit", "guarantee"))
    assert re.match(quantity, user["storage"]["capacity"])
    assert user["storage"]["type"] in ("dynamic", "static", "none")
    assert all(set(m) <= {"name", "mountPath", "subPath", "readOnly"} and {"name", "mountPath"} <= set(m)
               for m in user["storage"]["extraVolumeMounts"])
    assert isinstance(user["startTimeout"], int) and isinstance(values["cull"]["timeout"], int)
    assert isinstance(user["uid"], int) and isinstance(user["fsGid"], int)
    assert isinstance(user["image"]["tag"], str)            # "latest", quoted: a bare number would be a float
    assert values["proxy"]["service"]["type"] in ("ClusterIP", "NodePort", "LoadBalancer")
    assert all(isinstance(v, bool) for v in user["networkPolicy"]["egressAllowRules"].values())


@pytest.mark.parametrize("script", ["build-image.sh", "start-hub.sh"])
def test_deploy_scripts_parse_and_refuse_unknown_options(script):
    subprocess.run(["bash", "-n", str(DEPLOY / script)], check=True)
    if script == "build-image.sh":
        run = subprocess.run(["bash", str(DEPLOY / script), "--nonsense"], capture_output=True, text=True)
        assert run.returncode == 2 and "--nonsense" in run.stderr


def test_provision_refuses_container_mode_with_the_lab_or_test_tools():
    provision = DEPLOY.parent / "vagrant" / "provision.sh"
    for extra in ("--lab", "--test-tools"):
        run = subprocess.run(["bash", str(provision), "--container", extra], capture_output=True, text=True)
        assert run.returncode == 2 and "--container" in run.stderr

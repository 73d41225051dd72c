"""Request parsing and validation of labkit's engine: what is refused, with which status and words.

No server here: the routing table, the version prefix, the create body, and the values Docker
clients send (signals, names, booleans) - each refused before anything could be created.
"""
from __future__ import annotations

import signal

import pytest

from labkit.engine import api, clock, images, spec, state
from labkit.errors import InvalidValue, NotFound


def image_lookup(name):
    if images.normalize(name) == "labkit-busybox:latest":
        return images.Image(["labkit-busybox:latest"], None, "sha256:" + "0" * 64, 0)
    raise NotFound(f"No such image: {name}")


def create(**fields):
    body = {"Image": "labkit-busybox", "Cmd": ["echo", "hi"], "HostConfig": {}}
    for key, value in fields.items():
        section, _, name = key.rpartition("__")
        (body["HostConfig"] if section == "HostConfig" else body)[name] = value
    return spec.parse_create(body, image_lookup)


# --- paths and versions --------------------------------------------------------------------------

def test_versioned_and_unversioned_paths_reach_the_same_endpoint():
    assert api.split_target("/v1.41/containers/json?all=1") == ("/containers/json", {"all": "1"}, "1.41")
    assert api.split_target("/containers/json") == ("/containers/json", {}, None)
    assert api.route("GET", "/containers/abc/json")[1] == {"id": "abc"}
    assert api.route("GET", "/images/labkit-busybox:latest/json")[1] == {"name": "labkit-busybox:latest"}
    assert api.route("HEAD", "/_ping")[0] is api.ping


@pytest.mark.parametrize("target, words", [
    ("/v1.45/version", "client version 1.45 is too new. Maximum supported API version is 1.41"),
    ("/v1.12/version", "client version 1.12 is too old"),
])
def test_api_versions_outside_the_range_are_refused_like_dockerd(target, words):
    with pytest.raises(api.HTTPError) as err:
        api.split_target(target)
    assert err.value.status == 400 and words in str(err.value)


def test_a_docker_route_the_engine_lacks_is_501_naming_the_feature():
    with pytest.raises(api.HTTPError) as err:
        api.route("POST", "/containers/abc/changes-not")
    assert err.value.status == 404 and "page not found" in str(err.value)
    for method, path, feature in [("GET", "/containers/abc/export", "docker export"),
                                  ("POST", "/build", "docker build"),
                                  ("GET", "/images/some/name:tag/history", "docker history"),
                                  ("GET", "/networks", "docker network ls")]:
        with pytest.raises(api.HTTPError) as err:
            api.route(method, path)
        assert err.value.status == 501 and feature in str(err.value) and path in str(err.value)


def test_every_implemented_route_is_a_docker_route():
    from labkit.engine import docker_api
    for method, pattern, _ in api.ROUTES:
        path = pattern.pattern.strip("^$").replace("(?P<id>[^/]+)", "abc").replace("(?P<name>.+)", "img:1")
        assert docker_api.feature(method, path), (method, path)


def test_known_path_with_wrong_method_is_405():
    with pytest.raises(api.HTTPError) as err:
        api.route("GET", "/containers/create")
    assert err.value.status == 405 and "POST" in str(err.value) and "GET" in str(err.value)


def test_malformed_json_is_a_400():
    with pytest.raises(api.HTTPError) as err:
        api.parse_json_body(b'{"Image": "labkit-busybox", ')
    assert err.value.status == 400 and "malformed JSON" in str(err.value)
    assert api.parse_json_body(b"") == {}


def test_error_statuses_follow_docker():
    status = dict((kind.__name__, code) for kind, code in api.STATUS_OF)
    assert status == {"InvalidValue": 400, "NotFound": 404, "Conflict": 409, "LabkitError": 500}


@pytest.mark.parametrize("value, expected", [("1", True), ("true", True), ("True", True),
                                             ("0", False), ("false", False), ("", False)])
def test_boolean_query_parameters(value, expected):
    assert api.flag({"all": value}, "all") is expected
    assert api.flag({}, "all") is False


# --- the create body ------------------------------------------------------------------------------

def test_create_resolves_command_and_limits():
    s = create(Cmd=["sh", "-c", "echo hi"], Env=["A=1", "PATH=/bin"], Hostname="box",
               HostConfig__Memory=64 * 1024 * 1024, HostConfig__NanoCpus=500_000_000,
               HostConfig__PidsLimit=20, HostConfig__NetworkMode="none", HostConfig__AutoRemove=True)
    assert s.argv == ["sh", "-c", "echo hi"]
    assert s.env == ["PATH=/bin", "A=1"]             # the client's PATH replaces the image's, in place (dockerd)
    assert create(Cmd=["true"], Env=["PATH", "B=1", "B=2"]).env == ["B=2"]   # a bare NAME removes it
    assert (s.memory, s.cpu, s.pids, s.auto_remove, s.hostname) == (64 << 20, 0.5, 20, True, "box")


def test_cpu_quota_and_period_give_a_fraction():
    assert create(HostConfig__CpuQuota=25_000, HostConfig__CpuPeriod=100_000).cpu == 0.25
    assert create(HostConfig__CpuQuota=50_000).cpu == 0.5       # Docker's default period: 100 ms


def test_console_size_is_the_terminals_and_zero_means_unset():
    assert create(Tty=True, HostConfig__ConsoleSize=[33, 101]).console_size == (33, 101)
    assert create(Tty=True, HostConfig__ConsoleSize=[0, 0]).console_size is None


def test_image_default_command_and_entrypoint():
    assert create(Cmd=None).argv == ["sh"]
    assert create(Entrypoint=["echo"], Cmd=["a", "b"]).argv == ["echo", "a", "b"]
    assert create(Cmd="echo hi").argv == ["/bin/sh", "-c", "echo hi"]


def test_the_docker_clis_zero_values_are_accepted():
    body = {"Image": "labkit-busybox", "Cmd": ["true"], "Tty": False, "OpenStdin": False, "Volumes": {},
            "HostConfig": {"Binds": None, "PortBindings": {}, "Privileged": False, "Devices": [],
                           "RestartPolicy": {"Name": "no", "MaximumRetryCount": 0}, "NetworkMode": "default",
                           "PidsLimit": 0, "Memory": 0}}
    s = spec.parse_create(body, image_lookup)
    assert s.network_mode == "default" and s.memory is None and s.pids is None


@pytest.mark.parametrize("fields, words", [
    (dict(HostConfig__ConsoleSize=[24, 80]), "with Tty"),
    (dict(Healthcheck={"Test": ["CMD", "true"]}), "--health-cmd"),
    (dict(HostConfig__Binds=["/:/host"]), "-v"),
    (dict(HostConfig__PortBindings={"80/tcp": [{"HostPort": "8080"}]}), "-p"),
    (dict(HostConfig__Privileged=True), "--privileged"),
    (dict(HostConfig__NetworkMode="host"), "'none'"),
    (dict(HostConfig__NetworkMode="bridge"), "'none'"),
    (dict(HostConfig__RestartPolicy={"Name": "sometimes"}), "on-failure[:N]"),
    (dict(HostConfig__RestartPolicy={"Name": "always"}, HostConfig__AutoRemove=True), "with --rm"),
    (dict(HostConfig__Memory=1024), "at least 6 MiB"),
    (dict(HostConfig__Memory=-5), "integer >= 0"),
    (dict(HostConfig__CpuQuota=500), "at least 1000"),
    (dict(HostConfig__NanoCpus=10**9, HostConfig__CpuQuota=50_000), "not both"),
    (dict(HostConfig__PidsLimit="many"), "integer >= 1"),
    (dict(Cmd=[1, 2]), "list of strings"),
    (dict(Env=["=no-name"]), "NAME=value"),
    (dict(Env=[""]), "NAME=value"),
    (dict(WorkingDir="relative/dir"), "absolute path"),
    (dict(Hostname="bad host"), "letters, digits"),
    (dict(Image=""), "image name"),
])
def test_bad_or_unsupported_create_requests_are_refused(fields, words):
    with pytest.raises(InvalidValue) as err:
        create(**fields)
    assert words in str(err.value)


def test_unknown_image_is_not_found():
    with pytest.raises(NotFound, match="No such image: nosuch"):
        create(Image="nosuch")


def test_body_must_be_an_object():
    with pytest.raises(InvalidValue, match="JSON object"):
        spec.parse_create(["not", "an", "object"], image_lookup)


@pytest.mark.parametrize("name, ok", [("web", True), ("/web", True), ("labkit-a.b_c", True),
                                      ("a", False), ("-x", False), ("a/b", False), ("a b", False)])
def test_container_names_follow_dockers_rule(name, ok):
    if ok:
        assert spec.check_name(name) == name.lstrip("/")
    else:
        with pytest.raises(InvalidValue):
            spec.check_name(name)


# --- small values clients send ---------------------------------------------------------------------

@pytest.mark.parametrize("value, number", [("SIGTERM", 15), ("TERM", 15), ("kill", 9), ("9", 9), (None, 9)])
def test_signals_by_name_or_number(value, number):
    assert state.parse_signal(value) == number


@pytest.mark.parametrize("value", ["SIGNOPE", "0", "99", "-1"])
def test_bad_signals_are_refused(value):
    with pytest.raises(InvalidValue, match="signal"):
        state.parse_signal(value)


def test_signal_names_match_the_kernel():
    assert state.parse_signal("USR1") == signal.SIGUSR1


@pytest.mark.parametrize("seconds, text", [(0.3, "Less than a second"), (1, "1 second"), (5, "5 seconds"),
                                           (61, "About a minute"), (600, "10 minutes"),
                                           (3600, "About an hour"), (7200, "2 hours")])
def test_durations_read_like_docker_ps(seconds, text):
    assert clock.human_duration(seconds) == text


def test_timestamps_are_rfc3339_with_nanoseconds():
    assert clock.rfc3339(0) == "1970-01-01T00:00:00.000000000Z"
    assert clock.rfc3339(None) == "0001-01-01T00:00:00Z"
    assert clock.rfc3339(1.5).endswith(":01.500000000Z")


@pytest.mark.parametrize("ref, expected", [("busybox", "busybox:latest"), ("busybox:1", "busybox:1"),
                                           ("localhost:5000/x", "localhost:5000/x:latest"),
                                           ("sha256:abc", "sha256:abc")])
def test_image_references_get_latest_by_default(ref, expected):
    assert images.normalize(ref) == expected


def test_the_field_tables_do_not_overlap_and_name_api_fields():
    assert not set(spec.APPLIED) & set(spec.REFUSED)
    for name in [*spec.APPLIED, *spec.REFUSED]:
        section, _, field = name.partition(".")
        assert section in ("Config", "HostConfig") and field[:1].isupper(), name


def test_a_field_set_but_not_applied_is_refused_by_its_name():
    with pytest.raises(InvalidValue, match="HostConfig.OomKillDisable.*--oom-kill-disable"):
        create(HostConfig__OomKillDisable=True)
    with pytest.raises(InvalidValue, match="HostConfig.SomethingNew.*does not apply it"):
        create(HostConfig__SomethingNew=1)
    assert create(HostConfig__SomethingNew=0).argv == ["echo", "hi"]         # a zero value asks nothing

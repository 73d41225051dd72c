"""Cleanup hooks (see labkit.cleanup): lab namespaces in /run/netns and labkit- links in the host namespace."""
from __future__ import annotations

from .. import cleanup
from .netlink import delete_link, link_kind, off_loop, rtnl, wait_until
from .netns import HOST, NETNS_DIR, Namespace, remove_namespace


@off_loop
def find_leftovers():
    """Named lab namespaces in /run/netns, and labkit- links in the host namespace (read over netlink)."""
    found = []
    if NETNS_DIR.is_dir():
        for path in sorted(NETNS_DIR.iterdir()):
            if path.name.startswith(cleanup.PREFIX):
                found.append(cleanup.leftover("netns", path.name, str(path)))
    with rtnl(HOST) as ipr:
        for link in ipr.get_links():
            name = link.get("ifname") or ""
            if name.startswith(cleanup.PREFIX):
                found.append(cleanup.leftover("link", name, f"host namespace, {link_kind(link) or 'link'}",
                                              index=link["index"]))
    return found


@off_loop
def remove_leftover(item) -> None:
    if item.kind == "netns" and item.name.startswith(cleanup.PREFIX):
        remove_namespace(Namespace(item.name, str(NETNS_DIR / item.name), name=item.name))
    elif item.kind == "link" and item.name.startswith(cleanup.PREFIX):
        with rtnl(HOST) as ipr:
            found = ipr.link_lookup(ifname=item.name)
            if found:
                delete_link(ipr, found[0])
            wait_until(lambda: not ipr.link_lookup(ifname=item.name), what=item.name)
        cleanup.release("link", item.name)

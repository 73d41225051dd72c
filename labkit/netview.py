"""A network topology drawn with matplotlib: namespaces as boxes, bridges as bars, veth pairs as cables.

The picture is drawn from a `labkit.net.Topology`, which was read from the kernel over netlink, never
from labkit's own bookkeeping. This module only draws: it creates nothing and imports nothing from
labkit (it reads the topology's attributes), so the network layer can hand it out as `net.draw`.
"""
from __future__ import annotations


def draw(topology, ax=None, title: str | None = None):
    """Draw namespaces as boxes, interfaces inside them, bridges as bars, veth pairs as cables.

    Namespaces that hold a bridge (the "switches") and the host go in the lower row, the others in
    the upper row, ordered by the bridge port they are plugged into. Returns the matplotlib Figure.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle

    port_w, port_h, line_h, head_h, gap = 1.9, 0.5, 0.26, 0.8, 0.5

    def cables(ns):
        return [i for i in ns.interfaces if i.kind == "veth"]

    def others(ns):
        return [i for i in ns.interfaces if i.kind not in ("veth", "bridge")]

    def bridges(ns):
        return [i for i in ns.interfaces if i.kind == "bridge"]

    def width(ns):
        return max(2.6, len(cables(ns)) * (port_w + 0.2) + 0.2)

    def height(ns):  # header, text lines, a row of veth ends, then the bridge bars
        return head_h + line_h * len(others(ns)) + (port_h + 0.2 if cables(ns) else 0) \
            + (0.45 * len(bridges(ns)) + 0.35 if bridges(ns) else 0) + 0.1

    lower = [n for n in topology.namespaces if n.label == "host" or bridges(n)]
    upper = [n for n in topology.namespaces if n not in lower]

    def plug_position(ns):
        for i in cables(ns):
            end = topology.peer(ns, i)
            if end and end[0] in lower:
                return (lower.index(end[0]), cables(end[0]).index(end[1]))
        return (len(lower), 0)
    upper.sort(key=lambda n: (plug_position(n), n.label))

    rows = [r for r in (upper, lower) if r]
    row_w = max([sum(width(n) for n in r) + gap * (len(r) - 1) for r in rows] or [4.0])
    up_h = max([height(n) for n in upper] or [0])
    low_h = max([height(n) for n in lower] or [0])
    total_h = low_h + (up_h + 1.3 if upper else 0)
    if ax is None:   # a bare Figure, not pyplot's: nothing is shown twice or kept alive by pyplot
        fig = Figure(figsize=(min(16.0, max(6.0, row_w * 1.1)), max(2.0, total_h * 1.05)))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
    fig = ax.figure
    anchors = {}   # (ns label, ifindex) -> (x, y) where a cable attaches

    def box(ns, x, top, is_lower):
        w, h = width(ns), height(ns)
        ax.add_patch(FancyBboxPatch((x, top - h), w, h, boxstyle="round,pad=0.02,rounding_size=0.15",
                                    fc="#eef3fb" if is_lower else "#f4f4f4", ec="#4a6fa5", lw=1.4))
        ax.text(x + 0.12, top - 0.2, ns.label, fontsize=8.5, weight="bold", va="top")
        ax.text(x + 0.12, top - 0.5, f"netns inode {ns.inode}", fontsize=6.5, color="#555", va="top")
        y = top - head_h
        for i in others(ns):
            ax.text(x + 0.12, y, f"{i.name}  {'UP' if i.up else 'DOWN'}  {' '.join(i.addresses)}",
                    fontsize=7, va="top", color="#2a7d2a" if i.up else "#999")
            y -= line_h
        py = y - port_h - 0.05 if is_lower else top - h + 0.12     # veth ends: top (switch) or bottom row
        for k, i in enumerate(cables(ns)):
            px = x + 0.2 + k * (port_w + 0.2)
            ax.add_patch(Rectangle((px, py), port_w, port_h, fc="white", ec="#2a7d2a" if i.up else "#b33", lw=1.2))
            ax.text(px + port_w / 2, py + 0.35, i.name, fontsize=6.8, ha="center", va="center")
            ax.text(px + port_w / 2, py + 0.13, " ".join(i.addresses) or ("UP" if i.up else "DOWN"),
                    fontsize=6.3, ha="center", va="center", color="#333")
            anchors[(ns.label, i.index)] = (px + port_w / 2, py + port_h if is_lower else py)
        by = top - h + 0.15
        for b in bridges(ns):                         # a bar per bridge, a line from each of its ports
            ax.add_patch(Rectangle((x + 0.15, by), w - 0.3, 0.36, fc="#ffe7b3" if b.up else "#ddd", ec="#a66f00"))
            ax.text(x + w / 2, by + 0.18, f"bridge {b.name}  {'UP' if b.up else 'DOWN'}  {' '.join(b.addresses)}",
                    fontsize=7, ha="center", va="center")
            for k, p in enumerate(cables(ns)):
                if p.master == b.index:
                    px = x + 0.2 + k * (port_w + 0.2) + port_w / 2
                    ax.plot([px, px], [py, by + 0.36], color="#a66f00", lw=1.2)
            by += 0.45

    def layout(row, top, is_lower):
        x = (row_w - sum(width(n) for n in row) - gap * (len(row) - 1)) / 2
        for ns in row:
            box(ns, x, top, is_lower)
            x += width(ns) + gap

    layout(lower, low_h, True)
    layout(upper, total_h, False)
    for (a_ns, a_if), (b_ns, b_if) in topology.veth_pairs():
        a = anchors.get((a_ns, topology.namespace(a_ns).interface(a_if).index))
        b = anchors.get((b_ns, topology.namespace(b_ns).interface(b_if).index))
        if a and b and a_ns == b_ns:          # both ends in one namespace (a cable not yet moved): an arc
            ax.add_patch(FancyArrowPatch(a, b, arrowstyle="-", connectionstyle="arc3,rad=-0.6",
                                         color="#2a5caa", lw=2))
        elif a and b:
            ax.plot([a[0], b[0]], [a[1], b[1]], color="#2a5caa", lw=2, solid_capstyle="round")
    ax.set_xlim(-0.3, row_w + 0.3)
    ax.set_ylim(-0.3, total_h + 0.3)
    ax.set_aspect("equal")
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig

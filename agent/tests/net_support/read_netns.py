"""Dump a network namespace's links, addresses and main-table routes as JSON,
read with pyroute2 (an independent netlink client): the property tests
compare the agent's work with this, not with the agent's own reading.

usage: read_netns.py NETNS       one dump on stdout
       read_netns.py --serve     one dump per namespace name read on stdin,
                                 one JSON line each (saves a Python start per read)
"""
import json
import socket
import sys

from pyroute2 import IPRoute

RT_TABLE_MAIN = 254


def dump(ns):
    with IPRoute(netns=ns) as ipr:
        links = {}
        for l in ipr.get_links():
            info = l.get_attr("IFLA_LINKINFO")
            kind = info.get_attr("IFLA_INFO_KIND") if info else None
            links[l["index"]] = {
                "name": l.get_attr("IFLA_IFNAME"),
                "kind": kind,
                "mtu": l.get_attr("IFLA_MTU"),
                "alias": l.get_attr("IFLA_IFALIAS"),
                "up": bool(l["flags"] & 1),
                "master": l.get_attr("IFLA_MASTER"),
            }
        names = {i: l["name"] for i, l in links.items()}
        for l in links.values():
            l["master"] = names.get(l["master"]) if l["master"] else None
        addrs = []
        for a in ipr.get_addr():
            ip = a.get_attr("IFA_LOCAL") or a.get_attr("IFA_ADDRESS")
            if a["scope"] != 0:  # global scope only (no link-local, no host)
                continue
            addrs.append({"dev": names.get(a["index"]), "cidr": f"{ip}/{a['prefixlen']}"})
        routes = []
        for family in (socket.AF_INET, socket.AF_INET6):
            for r in ipr.get_routes(family=family):
                table = r.get_attr("RTA_TABLE") or r["table"]
                if table != RT_TABLE_MAIN or r["type"] != 1:  # unicast in main
                    continue
                dst = r.get_attr("RTA_DST") or ("0.0.0.0" if family == socket.AF_INET else "::")
                routes.append({
                    "destination": f"{dst}/{r['dst_len']}",
                    "gateway": r.get_attr("RTA_GATEWAY"),
                    "dev": names.get(r.get_attr("RTA_OIF")),
                    "metric": r.get_attr("RTA_PRIORITY") or 0,
                    "protocol": r["proto"],
                    "scope": r["scope"],
                })
    return {"links": list(links.values()), "addrs": addrs, "routes": routes}


def main():
    if sys.argv[1] != "--serve":
        json.dump(dump(sys.argv[1]), sys.stdout)
        return
    for line in sys.stdin:
        try:
            out = dump(line.strip())
        except Exception as e:  # reported to the test, which fails with it
            out = {"error": repr(e)}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()

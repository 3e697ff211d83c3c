#!/usr/bin/env python3
"""Write the hand-made seed inputs into fuzz/corpus/<target>/ (idempotent).

The seeds are what the fuzzers start from: small valid and nearly valid
examples of each format. scripts/fuzz adds what the fuzzers find; both are
minimised with `cargo fuzz cmin` before they are committed. Names start with
`seed-` so they are told apart from the fuzzers' own (hash-named) entries.
"""
import json
import os
import struct
import sys
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(ROOT)
MAGIC = 0x13026642


def header(image_id, data_len, crc, following, major=1, minor=0, words=3):
    w0 = MAGIC | (major << 32) | (minor << 36) | (words << 52) | (image_id << 56)
    return struct.pack("<QQQ", w0, data_len | (crc << 32), following)


def image(image_id, data, following=0, **kw):
    pad = b"\0" * ((-len(data)) % 8)
    crc = zlib.crc32(data + pad) & 0xFFFFFFFF
    return header(image_id, len(data), crc, following, **kw) + data + pad


def bfb_seeds():
    bl2, bl31, ver, initrd = 1, 3, 50, 63
    small = image(bl2, b"BL2 code", 1 << bl31) + image(bl31, b"BL31!", 0)
    installer = (
        image(bl2, b"\x01" * 13, (1 << bl31) | (1 << ver) | (1 << initrd))
        + image(bl31, b"", (1 << ver) | (1 << initrd))
        + image(ver, b'{"version":"2.9.1"}', 1 << initrd)
        + image(initrd, bytes(range(40)), 0, minor=2)
    )
    return {
        "seed-two-images": small,
        "seed-installer": installer,
        "seed-with-bfcfg": small + b"ENABLE_SFC_HBN=yes\nNUM_VFS=8\n",
        # A bf.cfg of fewer than 4 bytes was refused as a truncated header.
        "seed-short-bfcfg": small + b"A=1",
        "seed-truncated": installer[:-5],
        "seed-bad-crc": small[:8] + b"\xff\xff\xff\xff" + small[12:],
        "seed-bad-version": image(bl2, b"x", 0, major=2),
        "seed-bad-words": image(bl2, b"x", 0, words=4),
        # [id, len, data...] records: what the writer half of the target builds.
        "seed-records": bytes([bl2, 3]) + b"abc" + bytes([initrd, 9]) + b"123456789",
    }


def file(path):
    with open(os.path.join(REPO, path), "rb") as f:
        return f.read()


def rshim_seeds():
    out = {}
    for name in sorted(os.listdir(os.path.join(REPO, "agent/testdata/misc"))):
        out["seed-" + name.removesuffix(".txt")] = file("agent/testdata/misc/" + name)
    out["seed-flat-bfb-log"] = (
        b"DISPLAY_LEVEL   2 (0:basic, 1:advanced, 2:log)\nDEV_NAME        pcie-0000:04:00.2\n"
        b" INFO[BL2]: start\n INFO[UEFI]: PXE\n Linux up\n"
    )
    out["seed-installer-ok"] = (
        b"Log Messages\n---------------\n INFO[MISC]: Found bf.cfg\n"
        b" INFO[MISC]: Installation started\n INFO[MISC]: Installation finished\n"
        b" INFO[MISC]: Linux up\n"
    )
    out["seed-exception"] = (
        b" Exception(BL31): syndrome = 0x2000000\n PANIC(BL31): PC = 0x1234\n"
        b" x0 = 0x0\n CRITICAL ERROR: cannot mount\n"
    )
    return out


def j(v):
    return json.dumps(v, indent=1).encode()


def redfish_seeds():
    return {
        "seed-root": j({
            "@odata.id": "/redfish/v1", "Chassis": {"@odata.id": "/redfish/v1/Chassis"},
            "Systems": {"@odata.id": "/redfish/v1/Systems"},
            "Links": {"Sessions": {"@odata.id": "/redfish/v1/SessionService/Sessions"}},
        }),
        "seed-collection": j({
            "Members": [{"@odata.id": "/redfish/v1/Chassis/DGX"}, {"x": 1}],
            "Members@odata.count": 2,
        }),
        "seed-chassis": j({
            "@odata.id": "/redfish/v1/Chassis/DGX", "Id": "DGX",
            "EnvironmentMetrics": {"@odata.id": "/redfish/v1/Chassis/DGX/EnvironmentMetrics"},
            "Power": {"@odata.id": "/redfish/v1/Chassis/DGX/Power"},
            "Controls": {"@odata.id": "/redfish/v1/Chassis/DGX/Controls"},
            "Links": {"Contains": [{"@odata.id": "/redfish/v1/Chassis/GPU_0"}],
                      "ContainedBy": {"@odata.id": "/redfish/v1/Chassis/Rack"}},
        }),
        "seed-environment": j({
            "PowerWatts": {"DataSourceUri": "/x", "Reading": 6123.5},
            "EnergykWh": {"Reading": 12.5},
            "PowerLimitWatts": {"SetPoint": 700.0, "AllowableMin": 200.0,
                                "AllowableMax": 700.0, "ControlMode": "Automatic"},
        }),
        "seed-power": j({"PowerControl": [{
            "@odata.id": "/redfish/v1/Chassis/DGX/Power#/PowerControl/0", "MemberId": "0",
            "PowerConsumedWatts": 5400.0, "PowerCapacityWatts": 10200.0,
            "PowerLimit": {"LimitInWatts": None, "LimitException": "LogEventOnly",
                           "CorrectionInMs": 1000},
        }]}),
        "seed-control": j({
            "ControlType": "Power", "SetPoint": 6000.0, "SetPointUnits": "W",
            "AllowableMin": 4000.0, "AllowableMax": 10200.0, "ControlMode": "Disabled",
        }),
        "seed-error": j({"error": {
            "code": "Base.1.18.PropertyValueOutOfRange", "message": "See ExtendedInfo",
            "@Message.ExtendedInfo": [{"MessageId": "Base.1.18.PropertyValueOutOfRange",
                                       "Message": "SetPoint must be 4000-10200"}]}}),
        "seed-big-number": b'{"PowerWatts": {"Reading": 1e999}, "SetPoint": -0.0}',
    }


def config_seeds():
    return {
        "seed-packaging": file("packaging/config/agent.yaml"),
        "seed-docker": file("packaging/docker/agent/agent.yaml"),
        "seed-small": (
            b"node_name: gpu-node-01\ncoordinator: http://127.0.0.1:50051\ninsecure: true\n"
            b"shutdown_grace: 30s\nsession:\n  backoff_initial: 500ms\n  backoff_max: 1m\n"
            b"flash:\n  stage_timeouts: {boot: 5m, install: 40m}\n  poll_interval: 2s\n"
            b"reboot_command: [systemctl, reboot]\nlog_format: json\n"
        ),
    }


def network_seeds():
    doc = file("docs/network.md").decode()
    example = doc.split("```yaml\n", 1)[1].split("```", 1)[0].encode()
    return {
        "seed-docs-example": example,
        "seed-list": j([{
            "dpu": "dpu-1", "pfPciAddress": "0000:04:00.0",
            "network": {"mtu": 1500, "bridges": [{"name": "br0", "ports": ["veth1"],
                                                   "addresses": ["192.0.2.1/24"]}],
                        "routes": [{"destination": "default", "gateway": "192.0.2.254"}]},
        }]),
        "seed-json": b'{"numVfs": 4, "bridges": [{"name": "br-x", "mtu": 9000}]}',
        # Refused: errors that name a field path and a line.
        "seed-duplicate-key": b"bridges: []\nmtu: 1500\nbridges:\n  - name: br0\n",
        "seed-bad-mtu": b"bridges:\n  - name: br0\n    mtu: big\n",
        "seed-trailing-comma": b'{"mtu": 1500,}',
    }


def main():
    sets = {
        "bfb": bfb_seeds(),
        "rshim_misc": rshim_seeds(),
        "redfish": redfish_seeds(),
        "agent_config": config_seeds(),
        "host_network": network_seeds(),
    }
    for target, seeds in sets.items():
        d = os.path.join(ROOT, "corpus", target)
        os.makedirs(d, exist_ok=True)
        for name, data in seeds.items():
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)
    print(f"seeds written under {os.path.join(ROOT, 'corpus')}", file=sys.stderr)


if __name__ == "__main__":
    main()

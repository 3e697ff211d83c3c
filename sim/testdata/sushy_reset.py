"""OpenStack's sushy (a Redfish client hostplane did not write) power-cycles
the simulated BMC's System: it reads the allowed reset types from the
System resource, posts ComputerSystem.Reset PowerCycle, and watches
PowerState go Off and back On. Prints one JSON object of what it saw; the
Rust test (sim/tests/bmc_sushy.rs) checks it.

Usage: sushy_reset.py BASE_URL USERNAME PASSWORD
"""
import json
import sys
import time

import sushy
from sushy import auth


def main():
    base, user, password = sys.argv[1:4]
    root = sushy.Sushy(
        base + "/redfish/v1",
        auth=auth.BasicAuth(username=user, password=password),
        verify=False,
    )
    members = [m for m in root.get_system_collection().members_identities]
    system = root.get_system(members[0])
    out = {
        "systems": members,
        "allowed": sorted(v.value for v in system.get_allowed_reset_system_values()),
        "before": system.power_state.value,
    }
    system.reset_system(sushy.ResetType.POWER_CYCLE)
    seen = []
    deadline = time.time() + 20
    while time.time() < deadline:
        system.refresh(force=True)
        state = system.power_state.value
        if not seen or seen[-1] != state:
            seen.append(state)
        if "Off" in seen and state == "On":
            break
        time.sleep(0.02)
    out["states"] = seen
    # A reset type the System does not allow: sushy refuses it itself (it
    # read the allowed values from the System); sent anyway through sushy's
    # connector, the server refuses it with a Redfish error sushy parses.
    try:
        system.reset_system(sushy.ResetType.NMI)
        out["nmi_client"] = "accepted"
    except sushy.exceptions.SushyError as e:
        out["nmi_client"] = type(e).__name__
    try:
        root._conn.post(
            members[0] + "/Actions/ComputerSystem.Reset", data={"ResetType": "Nmi"}
        )
        out["nmi_server"] = "accepted"
    except sushy.exceptions.HTTPError as e:
        out["nmi_server"] = {"error": type(e).__name__, "status": e.status_code, "detail": str(e)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()

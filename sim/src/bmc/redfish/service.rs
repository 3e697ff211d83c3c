//! The documents a Redfish client reads before any resource: the OData
//! service document (`/redfish/v1/odata`), the CSDL metadata document
//! (`/redfish/v1/$metadata`), and the account service with its one account
//! and the three predefined roles.

use serde_json::{Value, json};

use super::resources::link;
use super::{ACCOUNT_SERVICE, ACCOUNTS, CHASSIS, MANAGERS, ROLES, SESSION_SERVICE, SESSIONS, SYSTEMS};

/// The account's id in `Accounts`.
pub(super) const ACCOUNT_ID: &str = "1";

/// The schemas the service's resources are typed with: (namespace, version
/// or "" for an unversioned collection). `$metadata` references each, and
/// each resource's `Link: rel=describedby` names its own.
const SCHEMAS: &[(&str, &str)] = &[
    ("ServiceRoot", "v1_15_0"),
    ("ComputerSystemCollection", ""),
    ("ComputerSystem", "v1_20_0"),
    ("ChassisCollection", ""),
    ("Chassis", "v1_23_0"),
    ("Power", "v1_7_1"),
    ("EnvironmentMetrics", "v1_3_0"),
    ("ControlCollection", ""),
    ("Control", "v1_3_0"),
    ("SensorCollection", ""),
    ("Sensor", "v1_7_0"),
    ("ManagerCollection", ""),
    ("Manager", "v1_18_0"),
    ("SessionService", "v1_1_9"),
    ("SessionCollection", ""),
    ("Session", "v1_7_0"),
    ("AccountService", "v1_13_0"),
    ("ManagerAccountCollection", ""),
    ("ManagerAccount", "v1_10_0"),
    ("RoleCollection", ""),
    ("Role", "v1_3_1"),
    ("Message", "v1_2_0"),
];

/// `Link: <…/Chassis.v1_23_0.json>; rel=describedby` for a body typed
/// `#Chassis.v1_23_0.Chassis` (`…/ChassisCollection.json` for a collection).
pub(super) fn described_by(odata_type: &str) -> Option<String> {
    let t = odata_type.strip_prefix('#')?;
    let parts: Vec<&str> = t.split('.').collect();
    let schema = match parts.as_slice() {
        [ns, version, _] => format!("{ns}.{version}"),
        [ns, _] => (*ns).to_string(),
        _ => return None,
    };
    Some(format!(
        "<https://redfish.dmtf.org/schemas/v1/{schema}.json>; rel=describedby"
    ))
}

/// `GET /redfish/v1/odata`: the service root and its direct children.
pub(super) fn odata_service() -> Value {
    let entry = |name: &str, url: &str| json!({ "name": name, "kind": "Singleton", "url": url });
    json!({
        "@odata.context": "/redfish/v1/$metadata",
        "value": [
            entry("Service", "/redfish/v1/"),
            entry("Systems", SYSTEMS),
            entry("Chassis", CHASSIS),
            entry("Managers", MANAGERS),
            entry("SessionService", SESSION_SERVICE),
            entry("AccountService", ACCOUNT_SERVICE),
            entry("Sessions", SESSIONS),
        ],
    })
}

/// `GET /redfish/v1/$metadata`: references to DMTF's schemas of every type
/// served, and the entity container the service root extends.
pub(super) fn metadata() -> String {
    let mut out = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <edmx:Edmx xmlns:edmx=\"http://docs.oasis-open.org/odata/ns/edmx\" Version=\"4.0\">\n",
    );
    let mut reference = |file: &str, namespaces: &[String]| {
        out += &format!("  <edmx:Reference Uri=\"http://redfish.dmtf.org/schemas/v1/{file}\">\n");
        for ns in namespaces {
            out += &format!("    <edmx:Include Namespace=\"{ns}\"/>\n");
        }
        out += "  </edmx:Reference>\n";
    };
    reference("RedfishExtensions_v1.xml", &["RedfishExtensions.v1_0_0".into()]);
    reference("Resource_v1.xml", &["Resource".into(), "Resource.v1_0_0".into()]);
    for (ns, version) in SCHEMAS {
        let mut includes = vec![(*ns).to_string()];
        if !version.is_empty() {
            includes.push(format!("{ns}.{version}"));
        }
        reference(&format!("{ns}_v1.xml"), &includes);
    }
    out += "  <edmx:DataServices>\n\
            \x20   <Schema xmlns=\"http://docs.oasis-open.org/odata/ns/edm\" Namespace=\"Service\">\n\
            \x20     <EntityContainer Name=\"Service\" Extends=\"ServiceRoot.v1_15_0.ServiceContainer\"/>\n\
            \x20   </Schema>\n\
            \x20 </edmx:DataServices>\n\
            </edmx:Edmx>\n";
    out
}

pub(super) fn account_service() -> Value {
    json!({
        "@odata.id": ACCOUNT_SERVICE,
        "@odata.type": "#AccountService.v1_13_0.AccountService",
        "Id": "AccountService",
        "Name": "Account Service",
        "ServiceEnabled": true,
        "Status": { "State": "Enabled", "Health": "OK" },
        "Accounts": link(ACCOUNTS),
        "Roles": link(ROLES),
    })
}

pub(super) fn account(username: &str) -> Value {
    json!({
        "@odata.id": format!("{ACCOUNTS}/{ACCOUNT_ID}"),
        "@odata.type": "#ManagerAccount.v1_10_0.ManagerAccount",
        "Id": ACCOUNT_ID,
        "Name": "User Account",
        "UserName": username,
        "Password": null,
        "RoleId": "Administrator",
        "Enabled": true,
        "Locked": false,
        "AccountTypes": ["Redfish"],
        "Links": { "Role": link(&format!("{ROLES}/Administrator")) },
    })
}

/// The predefined roles and their privileges, as the Redfish specification defines them.
pub(super) const PREDEFINED_ROLES: &[(&str, &[&str])] = &[
    (
        "Administrator",
        &[
            "Login",
            "ConfigureManager",
            "ConfigureUsers",
            "ConfigureComponents",
            "ConfigureSelf",
        ],
    ),
    ("Operator", &["Login", "ConfigureComponents", "ConfigureSelf"]),
    ("ReadOnly", &["Login", "ConfigureSelf"]),
];

pub(super) fn role(id: &str) -> Option<Value> {
    let (id, privileges) = PREDEFINED_ROLES.iter().find(|(r, _)| *r == id)?;
    Some(json!({
        "@odata.id": format!("{ROLES}/{id}"),
        "@odata.type": "#Role.v1_3_1.Role",
        "Id": id,
        "Name": format!("{id} Role"),
        "RoleId": id,
        "IsPredefined": true,
        "AssignedPrivileges": privileges,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn described_by_follows_the_type() {
        assert_eq!(
            described_by("#Chassis.v1_23_0.Chassis").as_deref(),
            Some("<https://redfish.dmtf.org/schemas/v1/Chassis.v1_23_0.json>; rel=describedby")
        );
        assert_eq!(
            described_by("#ChassisCollection.ChassisCollection").as_deref(),
            Some("<https://redfish.dmtf.org/schemas/v1/ChassisCollection.json>; rel=describedby")
        );
        assert_eq!(described_by("Chassis"), None);
    }

    #[test]
    fn metadata_references_every_schema_once() {
        let m = metadata();
        for (ns, _) in SCHEMAS {
            assert_eq!(m.matches(&format!("/{ns}_v1.xml\"")).count(), 1, "{ns}");
        }
        assert!(m.contains("<EntityContainer Name=\"Service\""));
    }
}

//! The log lines of the fleet, the same for both agent protocols: one INFO line per new
//! computer, per package offered for the first time, and per result; repeated offers (an
//! OCS agent is sent the same package at every PROLOG until it answers) and a native
//! agent's progress reports at DEBUG, so a fleet polling with nothing new writes nothing.
//!
//! String fields are recorded as strings: quoted in the text format, plain in JSON. Every
//! line names its computer with the same fields: `computer` (the name its inventory
//! gives, empty before the first), `device_id` (the OCS DEVICEID, or the native agent's id),
//! and `protocol` (`ocs` or `native`); a deployment's lines add `activation`, `package_id`
//! and, for results, `code` and `state`. Log pipelines (`--log-format json`) can join on
//! them.

use crate::server::deployments::Offer;
use crate::store::db::{Change, Computer, State};

/// Which agent protocol a line is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// OCS Inventory NG agents (`/ocsinventory`).
    Ocs,
    /// Tessera's own agent (`/v1`).
    Native,
}

impl Protocol {
    /// The value of the `protocol` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ocs => "ocs",
            Self::Native => "native",
        }
    }
}

/// Whether an offer is news: the first for its deployment, or one repeated until the agent
/// answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offered {
    /// The deployment goes from `waiting` to `notified` with this offer.
    First,
    /// Offered before, and not answered yet.
    Again,
}

impl Offered {
    /// How `offer` stands among the `changes` of the PROLOG (or check-in) that makes it: first
    /// when they mark its activation's deployment notified.
    pub fn of(offer: &Offer, changes: &[Change]) -> Self {
        let notified = changes.iter().any(
            |change| matches!(change, Change::Notify { activation } if *activation == offer.activation),
        );
        if notified { Self::First } else { Self::Again }
    }
}

/// A computer's first inventory (OCS) or first check-in (native): it is now known by name.
pub fn new_computer(protocol: Protocol, computer: &Computer) {
    tracing::info!(
        protocol = protocol.as_str(),
        computer = computer.name.as_str(),
        device_id = computer.device_id.as_str(),
        os = computer.os_name.as_str(),
        tags = computer.tags.join(",").as_str(),
        "new computer"
    );
}

/// A package offered to a computer: INFO the first time, DEBUG when repeated.
pub fn offer(
    protocol: Protocol,
    computer: &Computer,
    device_id: &str,
    offer: &Offer,
    how: Offered,
) {
    macro_rules! line {
        ($level:expr) => {
            tracing::event!(
                $level,
                protocol = protocol.as_str(),
                computer = computer.name.as_str(),
                device_id,
                activation = offer.activation.as_str(),
                package_id = offer.package_id.as_str(),
                force = offer.force,
                "offered a package"
            )
        };
    }
    match how {
        Offered::First => line!(tracing::Level::INFO),
        Offered::Again => line!(tracing::Level::DEBUG),
    }
}

/// One PROLOG or check-in answered: DEBUG, whatever it offered (the offers and results
/// that are news have their own INFO lines), so a fleet polling hourly writes nothing at
/// INFO. `from_memory`: answered from the in-memory index, without the database.
pub fn answered(protocol: Protocol, device_id: &str, offers: usize, from_memory: bool) {
    tracing::debug!(
        protocol = protocol.as_str(),
        device_id,
        offers,
        from_memory,
        "answered a contact"
    );
}

/// A result filed on `activations`' deployments: INFO when it settles them (a result code),
/// DEBUG for a native agent's progress (`downloading`, `installing`).
pub fn result(
    protocol: Protocol,
    computer: &str,
    device_id: &str,
    activations: &[String],
    package_id: &str,
    code: Option<&str>,
    state: State,
) {
    let activation = activations.join(",");
    match code {
        Some(code) => tracing::info!(
            protocol = protocol.as_str(),
            computer,
            device_id,
            activation = activation.as_str(),
            package_id,
            code,
            state = %state,
            "deployment result"
        ),
        None => tracing::debug!(
            protocol = protocol.as_str(),
            computer,
            device_id,
            activation = activation.as_str(),
            package_id,
            state = %state,
            "deployment progress"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(activation: &str) -> Offer {
        Offer {
            activation: activation.into(),
            package_id: "1234567890".into(),
            info_location: None,
            pack_location: None,
            force: false,
        }
    }

    #[test]
    fn an_offer_is_first_when_its_prolog_notifies_its_deployment() {
        let changes = [
            Change::Arm {
                activation: "default/tools".into(),
                package: "default/tools".into(),
                package_id: "1".into(),
                token: String::new(),
            },
            Change::Notify {
                activation: "default/hello".into(),
            },
        ];
        assert_eq!(
            Offered::of(&offer("default/hello"), &changes),
            Offered::First
        );
        // Armed in the same PROLOG but not yet notified, or notified before: a repeat.
        assert_eq!(
            Offered::of(&offer("default/tools"), &changes),
            Offered::Again
        );
        assert_eq!(Offered::of(&offer("default/other"), &[]), Offered::Again);
    }
}

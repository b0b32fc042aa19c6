//! The chairperson policy: a chair-only operation from an agent ccgate knows is not chair is
//! refused here and never reaches the gateway.

use super::audit::ChairCheck;
use super::failure::Failure;
use crate::config::UnknownChair;
use crate::labels::ChairVerdict;
use crate::session::ConfState;

/// Decides whether a chair-only operation may be forwarded, and records the verdict for the
/// request's audit line ([`super::audit`]).
pub fn check_chair(state: ConfState, on_unknown: UnknownChair) -> Result<(), Failure> {
    let verdict = match state {
        ConfState::Chair { .. } => ChairVerdict::Chair,
        ConfState::Participant { .. } => ChairVerdict::NotChairperson,
        // Requested: the gateway refuses chair operations until RequestSuccess, so there is
        // no conference to act on yet.
        ConfState::None | ConfState::RequestFailed { .. } | ConfState::Requested => ChairVerdict::NoConference,
        ConfState::Unknown => match on_unknown {
            UnknownChair::Forward => ChairVerdict::UnknownForwarded,
            UnknownChair::Deny => ChairVerdict::UnknownDenied,
        },
    };
    super::audit::record(ChairCheck { conference: state.conf_id(), verdict });
    match verdict {
        ChairVerdict::Chair | ChairVerdict::UnknownForwarded => Ok(()),
        ChairVerdict::NotChairperson | ChairVerdict::UnknownDenied => Err(Failure::NotChairperson(None)),
        ChairVerdict::NoConference => Err(Failure::NoConference(None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_per_conference_state() {
        let f = UnknownChair::Forward;
        assert!(check_chair(ConfState::Chair { conf_id: 1 }, f).is_ok());
        assert!(matches!(check_chair(ConfState::Participant { conf_id: 1 }, f), Err(Failure::NotChairperson(None))));
        for no_conf in [ConfState::None, ConfState::Requested, ConfState::RequestFailed { cause: Some(3) }] {
            assert!(matches!(check_chair(no_conf, f), Err(Failure::NoConference(None))), "{no_conf:?}");
        }
        assert!(check_chair(ConfState::Unknown, f).is_ok());
        assert!(matches!(check_chair(ConfState::Unknown, UnknownChair::Deny), Err(Failure::NotChairperson(None))));
    }
}

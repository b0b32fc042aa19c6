//! Phase `authorize`: the chairperson policy. A chair-only operation from an agent ccgate
//! knows is not chair is refused here and never reaches the gateway.

use crate::config::UnknownChair;
use crate::error::ProxyError;
use crate::session::ConfState;

/// Decides whether a chair-only operation may be forwarded.
pub fn check_chair(state: ConfState, on_unknown: UnknownChair) -> Result<(), ProxyError> {
    match state {
        ConfState::Chair { .. } => Ok(()),
        ConfState::Participant { .. } => Err(ProxyError::NotChairperson { gateway: None }),
        // Requested: the gateway refuses chair operations until RequestSuccess, so there is
        // no conference to act on yet.
        ConfState::None | ConfState::RequestFailed { .. } | ConfState::Requested => {
            Err(ProxyError::NoConference { gateway: None })
        }
        ConfState::Unknown => match on_unknown {
            UnknownChair::Forward => Ok(()),
            UnknownChair::Deny => Err(ProxyError::NotChairperson { gateway: None }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Outcome;

    #[test]
    fn decisions() {
        let f = UnknownChair::Forward;
        assert!(check_chair(ConfState::Chair { conf_id: 1 }, f).is_ok());
        assert_eq!(
            check_chair(ConfState::Participant { conf_id: 1 }, f).unwrap_err().outcome(),
            Outcome::NotChairperson
        );
        assert_eq!(check_chair(ConfState::None, f).unwrap_err().outcome(), Outcome::NoConference);
        assert_eq!(check_chair(ConfState::Requested, f).unwrap_err().outcome(), Outcome::NoConference);
        assert!(check_chair(ConfState::Unknown, f).is_ok());
        assert_eq!(check_chair(ConfState::Unknown, UnknownChair::Deny).unwrap_err().outcome(), Outcome::NotChairperson);
    }
}

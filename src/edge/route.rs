//! Phase `route`: which REST API route (`/v1/...`) a request is. Matching is exact on the
//! path (no trailing-slash or case folding), and ignores the query string.

use http::Method;

use crate::gateway::GatewayMethod;
use crate::metrics::MethodLabel;
use crate::ops::Failure;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    SignIn,
    GetSession,
    SignOut,
    CreateConference,
    StopAnnouncement,
    Events,
}

impl Route {
    /// The route's path, for the access log.
    pub fn path(self) -> &'static str {
        match self {
            Route::SignIn | Route::GetSession | Route::SignOut => "/v1/session",
            Route::CreateConference => "/v1/conference",
            Route::StopAnnouncement => "/v1/conference/announcement/stop",
            Route::Events => "/v1/events",
        }
    }

    /// The metrics `method` label: the gateway log name the route maps to.
    pub fn label(self) -> MethodLabel {
        match self {
            Route::SignIn => MethodLabel::Gateway(GatewayMethod::Login),
            Route::GetSession => MethodLabel::GetSession,
            Route::SignOut => MethodLabel::Gateway(GatewayMethod::Logout),
            Route::CreateConference => MethodLabel::Gateway(GatewayMethod::RequestAgentConf),
            Route::StopAnnouncement => MethodLabel::Gateway(GatewayMethod::StopVoiceToConf),
            Route::Events => MethodLabel::Events,
        }
    }
}

pub fn match_route(method: &Method, path: &str) -> Result<Route, Failure> {
    match path {
        "/v1/session" => match *method {
            Method::POST => Ok(Route::SignIn),
            Method::GET => Ok(Route::GetSession),
            Method::DELETE => Ok(Route::SignOut),
            _ => Err(Failure::MethodNotAllowed("GET, POST, DELETE")),
        },
        "/v1/conference" => match *method {
            Method::POST => Ok(Route::CreateConference),
            _ => Err(Failure::MethodNotAllowed("POST")),
        },
        "/v1/conference/announcement/stop" => match *method {
            Method::POST => Ok(Route::StopAnnouncement),
            _ => Err(Failure::MethodNotAllowed("POST")),
        },
        "/v1/events" => match *method {
            Method::GET => Ok(Route::Events),
            _ => Err(Failure::MethodNotAllowed("GET")),
        },
        _ => Err(Failure::NotFound),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(match_route(&Method::POST, "/v1/conference/announcement/stop").unwrap(), Route::StopAnnouncement);
        assert_eq!(Route::StopAnnouncement.label().as_str(), "stopVoiceToConf");
        assert!(matches!(match_route(&Method::GET, "/v1/conference"), Err(Failure::MethodNotAllowed("POST"))));
        for p in ["/v1/session/", "/V1/session", "/v1//session", "/v1/session/../session", "/"] {
            assert!(matches!(match_route(&Method::GET, p), Err(Failure::NotFound)), "{p}");
        }
    }
}

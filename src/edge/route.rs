//! Phase `route`: which REST API route (`/v1/...`) a request is. Matching is exact on the
//! path (no trailing-slash or case folding), and ignores the query string.

use http::Method;

use crate::gateway::GatewayMethod;
use crate::labels::MethodLabel;
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
    pub const ALL: [Route; 6] = [
        Route::SignIn,
        Route::GetSession,
        Route::SignOut,
        Route::CreateConference,
        Route::StopAnnouncement,
        Route::Events,
    ];

    /// The HTTP method the route answers.
    pub fn http_method(self) -> Method {
        match self {
            Route::SignIn | Route::CreateConference | Route::StopAnnouncement => Method::POST,
            Route::GetSession | Route::Events => Method::GET,
            Route::SignOut => Method::DELETE,
        }
    }

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

    /// `api/openapi.yaml` describes exactly the routes the router serves: the same
    /// (method, path) set, each one routed to the route that claims it.
    #[test]
    fn the_openapi_description_and_the_router_have_the_same_routes() {
        let spec = crate::admin::OPENAPI;
        let mut described = Vec::new();
        let mut path = None;
        for line in spec.lines() {
            if let Some(p) = line.strip_prefix("  /").and_then(|p| p.strip_suffix(':')) {
                path = Some(format!("/{p}"));
            } else if !line.starts_with("    ") {
                path = None;
            }
            if let (Some(p), Some(m)) = (&path, line.strip_prefix("    ").and_then(|m| m.strip_suffix(':'))) {
                if let Ok(m) = m.to_uppercase().parse::<Method>() {
                    if ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"].contains(&m.as_str()) {
                        described.push((m, p.clone()));
                    }
                }
            }
        }
        let mut served: Vec<(Method, String)> =
            Route::ALL.iter().map(|r| (r.http_method(), r.path().to_owned())).collect();
        let key = |v: &(Method, String)| format!("{} {}", v.0, v.1);
        described.sort_by_key(key);
        served.sort_by_key(key);
        assert_eq!(described, served);
        for r in Route::ALL {
            assert_eq!(match_route(&r.http_method(), r.path()).unwrap(), r);
        }
    }

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

//! What the fake DDI server answers to one request: the path read as a [`Resource`], the
//! token checked, a [`Fault`] applied or the honest body built from the script.

use axum::http::{header, HeaderMap, Method};
use serde::Serialize;
use serde_json::Value;

use super::*;
use crate::fleet::ddi::{ConfigDataMode, Feedback};

/// What hawkBit accepts as configData: `data`, a map of strings, and an optional `mode`.
#[derive(serde::Deserialize)]
struct ConfigDataShape {
    #[serde(rename = "mode", default)]
    _mode: Option<ConfigDataMode>,
    #[serde(rename = "data")]
    _data: std::collections::BTreeMap<String, String>,
}

/// The answer decided for a request.
pub(super) enum Reply {
    /// Never answer (until the server is dropped).
    Hang,
    Send {
        status: u16,
        content_type: Option<&'static str>,
        location: Option<String>,
        body: Vec<u8>,
    },
}

const JSON: &str = "application/json";

fn send(status: u16, content_type: Option<&'static str>, body: Vec<u8>) -> Reply {
    Reply::Send {
        status,
        content_type,
        location: None,
        body,
    }
}

fn json<T: Serialize>(status: u16, value: &T) -> Reply {
    // Structs of strings, numbers and enums: serialization cannot fail.
    send(
        status,
        Some(JSON),
        serde_json::to_vec(value).unwrap_or_default(),
    )
}

fn error(status: u16, message: &str) -> Reply {
    json(
        status,
        &ErrorBody {
            exception_class: "kit.ddi_server",
            error_code: format!("kit.ddi.{status}"),
            message: message.to_string(),
        },
    )
}

/// A path segment percent-encoded (all but `[A-Za-z0-9._~-]`), so that any id or file name
/// can stand in a link and be recognised in a request.
pub(super) fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `/{tenant}/controller/v1/{controller_id}`.
fn controller_path(inner: &Inner) -> String {
    format!(
        "/{}/controller/v1/{}",
        segment(&inner.tenant),
        segment(&inner.controller_id)
    )
}

/// The link to `{controller base}/{segments...}`, each segment encoded.
fn link(inner: &Inner, segments: &[&str]) -> Link {
    let mut href = format!("{}{}", inner.base_url, controller_path(inner));
    for s in segments {
        href.push('/');
        href.push_str(&segment(s));
    }
    Link { href }
}

/// The module id in the link of an artifact served here.
const MODULE: &str = "1";

/// The link of the offer's artifact when it is served here.
fn served_link(inner: &Inner, offer: &Offer) -> Option<Link> {
    matches!(offer.artifact.source, ArtifactSource::Here { .. }).then(|| {
        link(
            inner,
            &[
                "softwaremodules",
                MODULE,
                "artifacts",
                &offer.artifact.filename,
            ],
        )
    })
}

/// What a path under the controller asks for, with the id or file name it names (encoded).
fn route(rest: &[&str]) -> Option<(Resource, String)> {
    let r = match rest {
        [] => (Resource::Controller, String::new()),
        ["deploymentBase", id] => (Resource::DeploymentBase, id.to_string()),
        ["deploymentBase", id, "feedback"] => (Resource::DeploymentFeedback, id.to_string()),
        ["cancelAction", id] => (Resource::CancelAction, id.to_string()),
        ["cancelAction", id, "feedback"] => (Resource::CancelFeedback, id.to_string()),
        ["configData"] => (Resource::ConfigData, String::new()),
        ["softwaremodules", _, "artifacts", name] => (Resource::Artifact, name.to_string()),
        _ => return None,
    };
    Some(r)
}

fn method_of(resource: Resource) -> Method {
    match resource {
        Resource::Controller
        | Resource::DeploymentBase
        | Resource::CancelAction
        | Resource::Artifact => Method::GET,
        Resource::DeploymentFeedback | Resource::CancelFeedback => Method::POST,
        Resource::ConfigData => Method::PUT,
    }
}

/// Decides the answer to `method path` with these headers and this body.
pub(super) fn decide(
    inner: &Inner,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> (Option<Resource>, Reply) {
    let under = path
        .strip_prefix(&controller_path(inner))
        .filter(|rest| rest.is_empty() || rest.starts_with('/'));
    let Some(rest) = under else {
        return (None, error(404, "not a path of this tenant and controller"));
    };
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let Some((resource, name)) = route(&segments) else {
        return (None, error(404, "no such DDI resource"));
    };
    let mut script = lock(&inner.script);
    if let Some(token) = &script.token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if given != Some(token.as_str()) {
            return (Some(resource), error(401, "missing or wrong Authorization"));
        }
    }
    let fault = match script.once.get_mut(&resource).and_then(VecDeque::pop_front) {
        Some(f) => Some(f),
        None => script.faults.get(&resource).cloned(),
    };
    let honest = || {
        if *method != method_of(resource) {
            return error(405, "method not allowed here");
        }
        honest(inner, &script, resource, &name, body)
    };
    let reply = match fault {
        None => honest(),
        Some(Fault::Hang) => Reply::Hang,
        Some(Fault::Status(code)) => error(code, "fault scripted by the test"),
        Some(Fault::Redirect(to)) => Reply::Send {
            status: 307,
            content_type: None,
            location: Some(to),
            body: Vec::new(),
        },
        Some(Fault::MalformedJson) => {
            let whole = match honest() {
                Reply::Send { body, .. } if serde_json::from_slice::<Value>(&body).is_ok() => body,
                _ => br#"{"id": "1", "deployment": {}}"#.to_vec(),
            };
            send(200, Some(JSON), whole[..whole.len() / 2].to_vec())
        }
        Some(Fault::Oversized) => {
            let value = match honest() {
                Reply::Send { body, .. } => serde_json::from_slice::<Value>(&body).ok(),
                Reply::Hang => None,
            };
            let mut object = match value {
                Some(Value::Object(map)) => map,
                _ => serde_json::Map::new(),
            };
            object.insert("padding".into(), Value::String("x".repeat(OVERSIZED)));
            json(200, &Value::Object(object))
        }
    };
    (Some(resource), reply)
}

/// The scripted answer of a resource asked with its own method.
fn honest(inner: &Inner, script: &Script, resource: Resource, name: &str, body: &[u8]) -> Reply {
    let offer = script.offer.as_ref();
    let cancel = script.cancel.as_ref();
    match resource {
        Resource::Controller => {
            let (deployment_base, cancel_action) = match (cancel, offer) {
                (Some(c), _) => (None, Some(link(inner, &["cancelAction", &c.id]))),
                (None, Some(o)) => {
                    let mut l = link(inner, &["deploymentBase", &o.action_id]);
                    l.href.push_str(&format!("?c={}", script.generation));
                    (Some(l), None)
                }
                (None, None) => (None, None),
            };
            json(
                200,
                &ControllerBody {
                    config: ConfigBody {
                        polling: PollingBody {
                            sleep: script.sleep.clone(),
                        },
                    },
                    links: ControllerLinksBody {
                        deployment_base,
                        cancel_action,
                        config_data: script
                            .config_data_requested
                            .then(|| link(inner, &["configData"])),
                    },
                },
            )
        }
        Resource::DeploymentBase => match offer {
            Some(o) if segment(&o.action_id) == name => json(200, &deployment_body(inner, o)),
            _ => error(404, "no such action"),
        },
        Resource::CancelAction => match cancel {
            Some(c) if segment(&c.id) == name => json(
                200,
                &CancelActionBody {
                    id: c.id.clone(),
                    cancel_action: StopBody {
                        stop_id: c.stop_id.clone(),
                    },
                },
            ),
            _ => error(404, "no such cancel action"),
        },
        // hawkBit checks the body's shape (400 otherwise); any action id is accepted, so the
        // feedback of an action the server no longer offers is recorded too.
        Resource::DeploymentFeedback | Resource::CancelFeedback => {
            match serde_json::from_slice::<Feedback>(body) {
                Ok(_) => send(200, None, Vec::new()),
                Err(e) => error(400, &format!("not a feedback body: {e}")),
            }
        }
        Resource::ConfigData => match serde_json::from_slice::<ConfigDataShape>(body) {
            Ok(_) => send(200, None, Vec::new()),
            Err(e) => error(400, &format!("not a configData body: {e}")),
        },
        Resource::Artifact => match offer.map(|o| (o, &o.artifact.source)) {
            Some((o, ArtifactSource::Here { bytes, .. }))
                if segment(&o.artifact.filename) == name =>
            {
                send(200, Some("application/octet-stream"), bytes.to_vec())
            }
            _ => error(404, "no such artifact"),
        },
    }
}

fn deployment_body(inner: &Inner, offer: &Offer) -> DeploymentBaseBody {
    let a = &offer.artifact;
    let links = match &a.source {
        ArtifactSource::Here { also_download, .. } => {
            let here = served_link(inner, offer);
            if inner.base_url.starts_with("https:") {
                ArtifactLinksBody {
                    download: here,
                    download_http: None,
                }
            } else {
                ArtifactLinksBody {
                    download: here.clone().filter(|_| *also_download),
                    download_http: here,
                }
            }
        }
        ArtifactSource::At {
            download,
            download_http,
        } => ArtifactLinksBody {
            download: download.clone().map(|href| Link { href }),
            download_http: download_http.clone().map(|href| Link { href }),
        },
    };
    DeploymentBaseBody {
        id: offer.action_id.clone(),
        deployment: DeploymentBody {
            download: offer.download,
            update: offer.update,
            maintenance_window: offer.maintenance_window,
            chunks: vec![ChunkBody {
                part: offer.part.clone(),
                version: offer.version.clone(),
                name: offer.name.clone(),
                artifacts: vec![ArtifactBody {
                    filename: a.filename.clone(),
                    hashes: a.hashes.clone(),
                    size: a.size,
                    links,
                }],
            }],
        },
    }
}

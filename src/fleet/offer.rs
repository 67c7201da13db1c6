//! An offered deployment as the updater's download takes it (docs/API.md 9.1): the one
//! artifact's link, size and strongest hash become the same `PackageSpec` a `/download`
//! makes, checked by the same rules (version, plain file name, `max_package_size`).

use reqwest::Url;

use crate::error::{self, OtaError};
use crate::lifecycle::PackageSpec;

use super::ddi::{ActionId, DeploymentBase, Handling, MaintenanceWindow};
use super::http::DdiHttp;

/// What the updater downloads for an action.
#[derive(Debug, Clone)]
pub struct Offer {
    pub spec: PackageSpec,
    /// Downloaded but not installed at this offer (`update: skip`, window `unavailable`).
    pub hold: bool,
}

/// Whether an offer asks to download only: `update` handling `skip`, or a maintenance window
/// that is `unavailable`.
pub fn holds(d: &DeploymentBase) -> bool {
    d.deployment.update == Handling::Skip
        || d.deployment.maintenance_window == Some(MaintenanceWindow::Unavailable)
}

/// The offer as a package, or the error (`INVALID_PACKAGE`) that ends the action.
pub fn read(d: &DeploymentBase, http: &DdiHttp, max_package_size: u64) -> Result<Offer, OtaError> {
    let invalid = |detail: String| error::invalid_package(format!("deployment {}: {detail}", d.id));
    let artifact = d.the_artifact().map_err(|e| invalid(e.to_string()))?;
    let chunk_version = d
        .deployment
        .chunks
        .first()
        .map(|c| c.version.clone())
        .unwrap_or_default();
    if !crate::package::is_semver(&chunk_version) {
        return Err(invalid(format!(
            "chunk version `{chunk_version}` must look like 1.2.3"
        )));
    }
    let checksum = artifact
        .hashes
        .strongest()
        .and_then(|h| h.checksum())
        .map_err(|e| invalid(e.to_string()))?;
    let url = artifact
        .links
        .download
        .iter()
        .chain(artifact.links.download_http.iter())
        .map(|l| http.link(l, "download"))
        .find_map(Result::ok);
    let Some(url) = url else {
        // The rule of `ddi` names what is wrong (plain links without `allow_http`...).
        let why = artifact
            .download_url(false)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_else(|| "no usable download link".into());
        return Err(invalid(why));
    };
    if artifact.size > max_package_size {
        return Err(invalid(format!(
            "artifact size {} exceeds max_package_size {max_package_size}",
            artifact.size
        )));
    }
    if !crate::state::usable_package_name(&artifact.filename) {
        return Err(invalid(format!(
            "artifact filename `{}` is reserved or not a plain file name",
            artifact.filename
        )));
    }
    Ok(Offer {
        spec: PackageSpec {
            version: chunk_version,
            package_url: url.to_string(),
            package_name: artifact.filename.clone(),
            package_size: artifact.size,
            package_md5: checksum,
        },
        hold: holds(d),
    })
}

/// The action id at the end of a `deploymentBase` link (`.../deploymentBase/{id}?c=...`).
pub fn id_from_link(url: &Url) -> Option<ActionId> {
    let last = url.path_segments()?.rev().find(|s| !s.is_empty())?;
    ActionId::new(last).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/API.md 9.1: the id of an offer that does not parse comes from its link.
    #[test]
    fn api_9_1_action_id_from_the_deployment_link() {
        let u = Url::parse("https://h/DEFAULT/controller/v1/p/deploymentBase/42?c=-2129030598")
            .unwrap();
        assert_eq!(id_from_link(&u).unwrap().as_str(), "42");
        let u = Url::parse("https://h/deploymentBase/..%2Fx").unwrap();
        assert_eq!(id_from_link(&u), None);
    }
}

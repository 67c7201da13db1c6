//! docs/API.md 9.4: what the new binary of a self-update shows while the old one still
//! watches it: the installation it is part of, at stage `rebooting` (progress 100), read from
//! `state.json`, until the old binary commits (then ordinary start-up recovery takes over).

use time::OffsetDateTime;

use super::{lock, Updater};
use crate::lifecycle::Lifecycle;
use crate::state::{self, LoadOutcome};

impl Updater {
    /// Show the installation this binary takes over as `rebooting`. Read-only: nothing is
    /// written before the old binary has committed or gone.
    pub fn show_handover(&self) {
        let work = self.inner.cfg.work();
        let life = match state::load(&work.state()) {
            LoadOutcome::Loaded(st) => {
                let mut l = Lifecycle::restored_to_install(
                    st.spec(),
                    st.validator(),
                    OffsetDateTime::now_utc(),
                );
                let shown = l
                    .begin_install(0)
                    .and_then(|()| l.checking("tope-updater").map(|_| ()));
                if shown.is_err() {
                    tracing::warn!("self-update: cannot show the installation being taken over");
                }
                l
            }
            LoadOutcome::Missing | LoadOutcome::Unusable(_) => {
                tracing::warn!(
                    "self-update: no readable state.json; showing idle until the old updater \
                     commits"
                );
                Lifecycle::new()
            }
        };
        *lock(&self.inner.life) = life;
    }
}

impl Updater {
    /// After an installation returned `Done`: when it was a self-update, the journal says
    /// `committed` and the new binary has served the API through `settle_s`. Hand over (the
    /// new binary records and reports the outcome, as any start after a committed
    /// installation does) and stop this binary. Returns whether it was a self-update.
    pub(super) fn hand_over(&self) -> bool {
        let Some(new) = crate::handover::take_pending() else {
            return false;
        };
        new.commit();
        tracing::info!("self-update: this updater stops; the new one reports the outcome");
        self.inner.shutdown.trigger();
        true
    }
}

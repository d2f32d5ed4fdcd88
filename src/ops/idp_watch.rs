//! The OpenID provider (`sso.protocol: oidc`) after start-up: checked once at start (a warning
//! when it cannot be used, without delaying the start), and with `sso.ready_checks_idp: true`
//! again every [`INTERVAL`] and at once when a reload names another issuer, so `/readyz` follows
//! an outage and its end ([`crate::sso::idp_check`]). Otherwise nothing here asks the provider
//! anything after the first check.

use crate::sso::idp_check;
use crate::state::SharedSnapshot;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::time::{Duration, Instant};

/// How stale `/readyz`'s view of the provider may be: about as often as a load balancer probes.
pub const INTERVAL: Duration = Duration::from_secs(30);
/// How often the configuration is looked at for a change of issuer or of the setting.
const TICK: Duration = Duration::from_secs(1);

pub struct IdpWatch {
    pub state: SharedSnapshot,
}

/// The last check: which issuer, when, and whether it could be used.
struct Checked {
    issuer: String,
    at: Instant,
    ok: bool,
}

#[async_trait]
impl BackgroundService for IdpWatch {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut last: Option<Checked> = None;
        loop {
            let snap = self.state.load_full();
            if let Some(sso) = idp_check::oidc_in_use(snap.config.sso.as_ref()) {
                let issuer = &sso.oidc.issuer;
                let due = match &last {
                    None => true,
                    Some(c) if &c.issuer != issuer => true,
                    Some(c) => sso.ready_checks_idp && c.at.elapsed() >= INTERVAL,
                };
                if due {
                    let result = idp_check::check(sso).await;
                    let same = last.as_ref().filter(|c| &c.issuer == issuer);
                    match &result {
                        Ok(ok) if same.is_none() => log::info!("sso.oidc: {ok}"),
                        Ok(_) if same.is_some_and(|c| !c.ok) => {
                            log::info!("sso.oidc: the sign-in server can be used again")
                        }
                        // One line per outage, not one per interval.
                        Err(e) if same.is_none_or(|c| c.ok) => log::warn!(
                            "sso.oidc: the sign-in server cannot be used (the first sign-in will fail unless this changes): {e}"
                        ),
                        _ => {}
                    }
                    last = Some(Checked {
                        issuer: issuer.clone(),
                        at: Instant::now(),
                        ok: result.is_ok(),
                    });
                }
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(TICK) => {}
            }
        }
    }
}

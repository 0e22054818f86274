//! The login throttle: failed logins counted per username and per client address in Redis, cluster-wide, within a
//! window. An attempt is counted *before* the password is checked, in one script with the limit check
//! (`FailureCounters::reserve`), so concurrent guesses cannot all pass a check made before any of them was counted;
//! a success gives its attempts back.

use std::net::IpAddr;
use std::time::Duration;

use router::FailureCounters;
use tracing::debug;

/// The limits of one window.
#[derive(Debug, Clone, Copy)]
pub struct LoginLimits {
    pub per_user: i64,
    pub per_address: i64,
    pub window: Duration,
}

/// What the throttle decided for one login attempt.
pub enum Admission {
    /// Too many recent failures for the username (`scope` "user") or the address ("ip"): retry after the window.
    Refused {
        scope: &'static str,
        retry_after: Duration,
    },
    /// Go ahead; report how it ended.
    Admitted(LoginAttempt),
}

/// An admitted attempt, counted as a failure under the keys it took until it ends otherwise.
pub struct LoginAttempt {
    failures: FailureCounters,
    user_key: String,
    taken: Vec<String>,
}

/// Takes the attempt under the username's and the address's counters. If Redis cannot say, the login goes ahead:
/// the Argon2 cost and its bounded pool still limit guessing.
pub async fn admit(
    redis: router::RedisClient,
    limits: LoginLimits,
    username: &str,
    address: IpAddr,
) -> Admission {
    let failures = FailureCounters::new(redis, limits.window);
    let user_key = format!("login:user:{username}");
    let address_key = format!("login:ip:{address}");
    let mut taken = Vec::with_capacity(2);
    for (key, limit, scope) in [
        (&user_key, limits.per_user, "user"),
        (&address_key, limits.per_address, "ip"),
    ] {
        match failures.reserve(key, limit).await {
            Ok(true) => taken.push(key.clone()),
            Ok(false) => {
                release(&failures, &taken).await;
                ::metrics::counter!("im_login_throttled_total", "scope" => scope).increment(1);
                return Admission::Refused {
                    scope,
                    retry_after: limits.window,
                };
            }
            Err(error) => {
                ::metrics::counter!("im_login_throttle_unavailable_total").increment(1);
                debug!(%error, "login failure counts unavailable; not throttling");
            }
        }
    }
    Admission::Admitted(LoginAttempt {
        failures,
        user_key,
        taken,
    })
}

async fn release(failures: &FailureCounters, keys: &[String]) {
    for key in keys {
        if let Err(error) = failures.release(key).await {
            debug!(%error, "could not give back a login attempt");
        }
    }
}

impl LoginAttempt {
    /// The password was right: the username's failures are cleared, the address's attempt is given back.
    pub async fn succeeded(self) {
        for key in &self.taken {
            let cleared = if *key == self.user_key {
                self.failures.clear(key).await
            } else {
                self.failures.release(key).await
            };
            if let Err(error) = cleared {
                debug!(%error, "could not clear the login failures");
            }
        }
    }

    /// The attempt could not be judged (the user store was unavailable): not the client's failure.
    pub async fn abandoned(self) {
        release(&self.failures, &self.taken).await;
    }

    /// The credentials were wrong: the attempt stays counted, as the failure's record.
    pub fn failed(self) {}
}

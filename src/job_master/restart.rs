//! Restart strategies: whether, and after how long, a failed job is restarted (Flink's `restart-strategy.*`).
//!
//! The JobMaster owns one [`RestartPolicy`] per job and asks it on every failure ([`RestartPolicy::on_failure`]);
//! the answer is either a delay to wait before redeploying or a reason to give up (the job becomes FAILED).
//! The policy is pure: time comes in as wall-clock milliseconds (the same times the JobMaster writes into the
//! replicated state), and the only randomness, the exponential strategy's jitter, comes from a seeded generator.
//!
//! The strategies, with Flink's semantics:
//!
//! * `none`: the first failure fails the job.
//! * `fixed-delay`: restart after `delay`, at most `attempts` times in the job's life.
//! * `failure-rate`: restart after `delay` unless the failures within the last `failure_rate_interval` (this one
//!   included, an interval counted inclusively) exceed `max_failures_per_interval`.
//! * `exponential-delay`: the first delay is `initial_backoff`, each further one `backoff_multiplier` times the one
//!   before, capped at `max_backoff`, each spread by up to ±`jitter_factor` of itself (never above the cap, so at
//!   the cap the jitter only shortens). A job that ran without failure for longer than `reset_backoff_threshold`
//!   (counted from the later of its last failure and its last reaching RUNNING) starts over from `initial_backoff`
//!   and gets `attempts_before_reset_backoff` attempts again.
//!
//! # Failover
//!
//! The policy lives on the leader. A new leader rebuilds it with [`RestartPolicy::with_history`] from the failure
//! times kept in the replicated state, by replaying them. Times of reaching RUNNING are not replicated, so after a
//! failover the exponential strategy's quiet period counts from the failures alone until the JobMaster reports
//! RUNNING again; the jitter drawn after a failover differs from what the old leader would have drawn.

use std::collections::VecDeque;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::checkpoint::coordinator::format_duration;
use crate::jobgraph::RestartStrategySpec;

/// Attempt counts at or above this are Flink's "effectively unlimited" (`Integer.MAX_VALUE`).
const UNLIMITED_ATTEMPTS: u32 = i32::MAX as u32;

/// What to do about a failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestartDecision {
    /// Redeploy the job after waiting `delay`.
    Restart {
        /// How long to wait before redeploying.
        delay: Duration,
    },
    /// Fail the job for good.
    GiveUp {
        /// Why no restart is allowed, for the job's failure cause.
        reason: String,
    },
}

/// A strategy with its parameters resolved to the units the policy computes in.
#[derive(Debug, Clone, PartialEq)]
enum Strategy {
    /// Never restart.
    None,
    /// A fixed number of restarts, each after the same delay.
    FixedDelay {
        /// Restarts allowed in the job's life.
        attempts: u32,
        /// Wait before each restart.
        delay: Duration,
    },
    /// Restarts as long as failures are not too frequent.
    FailureRate {
        /// Failures allowed within `interval_ms`.
        max_failures: u32,
        /// The sliding window, in milliseconds.
        interval_ms: u64,
        /// Wait before each restart.
        delay: Duration,
    },
    /// Growing delays with jitter, reset after a quiet period.
    ExponentialDelay {
        /// First delay, in milliseconds.
        initial_ms: f64,
        /// Cap on the delay, in milliseconds.
        max_ms: f64,
        /// Growth factor per failure.
        multiplier: f64,
        /// Quiet period after which the backoff resets, in milliseconds.
        reset_threshold_ms: u64,
        /// Spread of each delay, as a fraction of it, 0.0 ..= 1.0.
        jitter: f64,
        /// Restarts allowed between resets.
        attempts: u32,
    },
}

impl Strategy {
    fn from_spec(spec: &RestartStrategySpec) -> Self {
        match *spec {
            RestartStrategySpec::None => Self::None,
            RestartStrategySpec::FixedDelay { attempts, delay } => {
                Self::FixedDelay { attempts, delay: delay.as_duration() }
            }
            RestartStrategySpec::FailureRate { max_failures_per_interval, failure_rate_interval, delay } => {
                Self::FailureRate {
                    max_failures: max_failures_per_interval,
                    interval_ms: failure_rate_interval.0,
                    delay: delay.as_duration(),
                }
            }
            RestartStrategySpec::ExponentialDelay {
                initial_backoff,
                max_backoff,
                backoff_multiplier,
                reset_backoff_threshold,
                jitter_factor,
                attempts_before_reset_backoff,
            } => Self::ExponentialDelay {
                initial_ms: initial_backoff.0 as f64,
                max_ms: max_backoff.0 as f64,
                multiplier: backoff_multiplier,
                reset_threshold_ms: reset_backoff_threshold.0,
                jitter: if jitter_factor.is_finite() { jitter_factor.clamp(0.0, 1.0) } else { 0.0 },
                attempts: attempts_before_reset_backoff,
            },
        }
    }
}

/// One job's restart strategy and the failures it has seen. See the module documentation.
#[derive(Debug, Clone)]
pub struct RestartPolicy {
    /// The strategy and its parameters.
    strategy: Strategy,
    /// Draws the exponential strategy's jitter.
    rng: StdRng,
    /// Restarts granted so far.
    restarts: u32,
    /// Failure times (unix ms) that may still fall within the failure-rate window, oldest first.
    recent_failures: VecDeque<u64>,
    /// The last failure's time (unix ms).
    last_failure_ms: Option<u64>,
    /// When the job last reached RUNNING (unix ms), as reported by [`RestartPolicy::on_running`].
    running_since_ms: Option<u64>,
    /// Exponential strategy: the last delay before jitter, in ms; `None` when the next one is the initial backoff.
    backoff_ms: Option<f64>,
    /// Exponential strategy: failures since the last backoff reset.
    attempts_since_reset: u32,
}

impl RestartPolicy {
    /// A policy following `spec` with no failures yet; `seed` drives the jitter, so a test can reproduce it.
    pub fn new(spec: &RestartStrategySpec, seed: u64) -> Self {
        Self {
            strategy: Strategy::from_spec(spec),
            rng: StdRng::seed_from_u64(seed),
            restarts: 0,
            recent_failures: VecDeque::new(),
            last_failure_ms: None,
            running_since_ms: None,
            backoff_ms: None,
            attempts_since_reset: 0,
        }
    }

    /// The policy as it would be after the failures at `failure_times_ms` (oldest first), replayed in order: how a
    /// new leader rebuilds it from the replicated state.
    pub fn with_history(mut self, failure_times_ms: &[u64]) -> Self {
        for &at_ms in failure_times_ms {
            self.on_failure(at_ms);
        }
        self
    }

    /// Decides what to do about a failure at `now_ms`, and records it.
    pub fn on_failure(&mut self, now_ms: u64) -> RestartDecision {
        let quiet_since_ms = self.last_failure_ms.max(self.running_since_ms);
        self.last_failure_ms = Some(now_ms);
        let decision = match self.strategy {
            Strategy::None => give_up("restart strategy is none".to_string()),
            Strategy::FixedDelay { attempts, delay } => self.fixed_delay(attempts, delay),
            Strategy::FailureRate { max_failures, interval_ms, delay } => {
                self.failure_rate(now_ms, max_failures, interval_ms, delay)
            }
            Strategy::ExponentialDelay { .. } => self.exponential_delay(now_ms, quiet_since_ms),
        };
        if matches!(decision, RestartDecision::Restart { .. }) {
            self.restarts = self.restarts.saturating_add(1);
        }
        decision
    }

    /// Records that the job reached RUNNING at `now_ms`: the exponential strategy's quiet period counts from here.
    pub fn on_running(&mut self, now_ms: u64) {
        self.running_since_ms = Some(now_ms);
    }

    /// Restarts granted so far (replayed history included).
    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    /// The strategy and its parameters in words, e.g. `fixed-delay: 3 attempts, 1s delay`.
    pub fn describe(&self) -> String {
        match self.strategy {
            Strategy::None => "none".to_string(),
            Strategy::FixedDelay { attempts, delay } => {
                format!("fixed-delay: {}, {} delay", attempts_text(attempts, ""), format_duration(delay))
            }
            Strategy::FailureRate { max_failures, interval_ms, delay } => format!(
                "failure-rate: at most {max_failures} {} per {}, {} delay",
                plural(max_failures, "failure", "failures"),
                format_duration(Duration::from_millis(interval_ms)),
                format_duration(delay)
            ),
            Strategy::ExponentialDelay { initial_ms, max_ms, multiplier, reset_threshold_ms, jitter, attempts } => {
                format!(
                    "exponential-delay: {} initial backoff, x{multiplier} per failure up to {}, {}% jitter, \
                     reset after {} without failure, {}",
                    format_duration(ms_duration(initial_ms)),
                    format_duration(ms_duration(max_ms)),
                    (jitter * 100.0).round(),
                    format_duration(Duration::from_millis(reset_threshold_ms)),
                    attempts_text(attempts, "")
                )
            }
        }
    }

    fn fixed_delay(&self, attempts: u32, delay: Duration) -> RestartDecision {
        if self.restarts < attempts {
            RestartDecision::Restart { delay }
        } else {
            give_up(format!("exhausted {}", attempts_text(attempts, "restart ")))
        }
    }

    fn failure_rate(&mut self, now_ms: u64, max_failures: u32, interval_ms: u64, delay: Duration) -> RestartDecision {
        self.recent_failures.push_back(now_ms);
        // A failure exactly one interval ago is still within it.
        while self.recent_failures.front().is_some_and(|&at| now_ms.saturating_sub(at) > interval_ms) {
            self.recent_failures.pop_front();
        }
        let within = self.recent_failures.len();
        if within > max_failures as usize {
            let interval = format_duration(Duration::from_millis(interval_ms));
            return give_up(format!(
                "{within} failures within {interval} exceed the failure-rate limit of {max_failures} per {interval}"
            ));
        }
        RestartDecision::Restart { delay }
    }

    fn exponential_delay(&mut self, now_ms: u64, quiet_since_ms: Option<u64>) -> RestartDecision {
        let Strategy::ExponentialDelay { initial_ms, max_ms, multiplier, reset_threshold_ms, jitter, attempts } =
            self.strategy
        else {
            return give_up("restart strategy is not exponential-delay".to_string());
        };
        if quiet_since_ms.is_some_and(|since| now_ms.saturating_sub(since) > reset_threshold_ms) {
            self.backoff_ms = None;
            self.attempts_since_reset = 0;
        }
        self.attempts_since_reset = self.attempts_since_reset.saturating_add(1);
        if self.attempts_since_reset > attempts {
            return give_up(format!("exhausted {} since the last backoff reset", attempts_text(attempts, "restart ")));
        }
        let base_ms = match self.backoff_ms {
            None => initial_ms.min(max_ms),
            Some(previous) => (previous * multiplier).min(max_ms),
        };
        self.backoff_ms = Some(base_ms);
        let spread = if jitter > 0.0 { base_ms * jitter * self.rng.gen_range(-1.0..=1.0) } else { 0.0 };
        RestartDecision::Restart { delay: ms_duration((base_ms + spread).min(max_ms)) }
    }
}

fn give_up(reason: String) -> RestartDecision {
    RestartDecision::GiveUp { reason }
}

/// Milliseconds as a duration, rounded to whole milliseconds; nonsense (negative, NaN) is zero.
fn ms_duration(ms: f64) -> Duration {
    if ms.is_finite() && ms > 0.0 {
        Duration::from_millis(ms.round().min(u64::MAX as f64) as u64)
    } else {
        Duration::ZERO
    }
}

/// E.g. "3 restart attempts", "1 attempt" or "unlimited attempts": `prefix` goes before "attempt(s)".
fn attempts_text(attempts: u32, prefix: &str) -> String {
    let noun = plural(attempts, "attempt", "attempts");
    if attempts >= UNLIMITED_ATTEMPTS {
        format!("unlimited {prefix}{noun}")
    } else {
        format!("{attempts} {prefix}{noun}")
    }
}

fn plural(n: u32, one: &'static str, many: &'static str) -> &'static str {
    if n == 1 {
        one
    } else {
        many
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobgraph::DurationMs;

    fn fixed(attempts: u32, delay_ms: u64) -> RestartStrategySpec {
        RestartStrategySpec::FixedDelay { attempts, delay: DurationMs(delay_ms) }
    }

    fn failure_rate(max: u32, interval_ms: u64) -> RestartStrategySpec {
        RestartStrategySpec::FailureRate {
            max_failures_per_interval: max,
            failure_rate_interval: DurationMs(interval_ms),
            delay: DurationMs(500),
        }
    }

    fn exponential(jitter_factor: f64, attempts: u32) -> RestartStrategySpec {
        RestartStrategySpec::ExponentialDelay {
            initial_backoff: DurationMs(1_000),
            max_backoff: DurationMs(10_000),
            backoff_multiplier: 2.0,
            reset_backoff_threshold: DurationMs(60_000),
            jitter_factor,
            attempts_before_reset_backoff: attempts,
        }
    }

    fn delay_ms(decision: RestartDecision) -> u64 {
        match decision {
            RestartDecision::Restart { delay } => delay.as_millis() as u64,
            RestartDecision::GiveUp { reason } => panic!("gave up: {reason}"),
        }
    }

    fn reason(decision: RestartDecision) -> String {
        match decision {
            RestartDecision::GiveUp { reason } => reason,
            other => panic!("expected GiveUp, got {other:?}"),
        }
    }

    /// Plays a JobMaster on tokio's paused clock, with `now_ms` read from it: the job runs for the next of `runs`
    /// and fails; a restart's delay is slept before the job is redeployed and reported RUNNING. Returns the delays
    /// slept and the reason the policy finally gave up (panics if it never does).
    async fn drive(policy: &mut RestartPolicy, runs: &[u64]) -> (Vec<Duration>, String) {
        let start = tokio::time::Instant::now();
        let now_ms = || start.elapsed().as_millis() as u64;
        let mut slept = Vec::new();
        for &run_ms in runs {
            tokio::time::sleep(Duration::from_millis(run_ms)).await;
            match policy.on_failure(now_ms()) {
                RestartDecision::Restart { delay } => {
                    let failed_at = tokio::time::Instant::now();
                    tokio::time::sleep(delay).await;
                    assert_eq!(failed_at.elapsed(), delay, "the redeploy happens exactly the decided delay later");
                    policy.on_running(now_ms());
                    slept.push(delay);
                }
                RestartDecision::GiveUp { reason } => return (slept, reason),
            }
        }
        panic!("the policy never gave up; restarts after {slept:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_job_master_sleeps_the_decided_delays_until_the_policy_gives_up() {
        let start = tokio::time::Instant::now();
        let mut policy = RestartPolicy::new(&fixed(2, 1_500), 0);
        let (slept, reason) = drive(&mut policy, &[5_000, 5_000, 5_000]).await;
        assert_eq!(slept, vec![Duration::from_millis(1_500); 2]);
        assert_eq!(reason, "exhausted 2 restart attempts");
        assert_eq!(start.elapsed(), Duration::from_millis(3 * 5_000 + 2 * 1_500));

        // Exponential, at most 3 attempts between resets: 1s, 2s; a 70s run (over the 60s threshold) resets the
        // backoff and the attempts; then 1s, 2s, 4s, and the fourth attempt since the reset is refused.
        let start = tokio::time::Instant::now();
        let mut policy = RestartPolicy::new(&exponential(0.0, 3), 7);
        let (slept, reason) = drive(&mut policy, &[10_000, 10_000, 70_000, 10_000, 10_000, 10_000]).await;
        assert_eq!(slept, [1, 2, 1, 2, 4].map(Duration::from_secs));
        assert_eq!(reason, "exhausted 3 restart attempts since the last backoff reset");
        assert_eq!(policy.restarts(), 5);
        assert_eq!(start.elapsed(), Duration::from_secs(10 + 10 + 70 + 10 + 10 + 10 + 1 + 2 + 1 + 2 + 4));
    }

    #[test]
    fn none_never_restarts() {
        let mut policy = RestartPolicy::new(&RestartStrategySpec::None, 0);
        assert_eq!(reason(policy.on_failure(0)), "restart strategy is none");
        assert_eq!(policy.restarts(), 0);
        assert_eq!(policy.describe(), "none");
    }

    #[test]
    fn fixed_delay_restarts_a_fixed_number_of_times() {
        let mut policy = RestartPolicy::new(&fixed(3, 1_000), 0);
        for i in 0..3 {
            assert_eq!(policy.on_failure(i * 100_000), RestartDecision::Restart { delay: Duration::from_secs(1) });
        }
        assert_eq!(policy.restarts(), 3);
        assert_eq!(reason(policy.on_failure(400_000)), "exhausted 3 restart attempts");
        assert_eq!(policy.describe(), "fixed-delay: 3 attempts, 1s delay");
        assert_eq!(RestartPolicy::new(&fixed(1, 250), 0).describe(), "fixed-delay: 1 attempt, 250ms delay");
        assert_eq!(
            RestartPolicy::new(&fixed(i32::MAX as u32, 1_000), 0).describe(),
            "fixed-delay: unlimited attempts, 1s delay"
        );
        assert_eq!(reason(RestartPolicy::new(&fixed(0, 1_000), 0).on_failure(0)), "exhausted 0 restart attempts");
    }

    #[test]
    fn fixed_delay_history_counts_past_restarts() {
        let mut policy = RestartPolicy::new(&fixed(3, 1_000), 0).with_history(&[10, 20]);
        assert_eq!(policy.restarts(), 2);
        assert_eq!(delay_ms(policy.on_failure(30)), 1_000);
        assert!(matches!(policy.on_failure(40), RestartDecision::GiveUp { .. }));
    }

    #[test]
    fn failure_rate_gives_up_when_failures_within_the_interval_exceed_the_limit() {
        let mut policy = RestartPolicy::new(&failure_rate(2, 60_000), 0);
        assert_eq!(delay_ms(policy.on_failure(0)), 500);
        assert_eq!(delay_ms(policy.on_failure(30_000)), 500);
        // The first failure is exactly one interval old: still within it, so this is the third.
        assert_eq!(
            reason(policy.on_failure(60_000)),
            "3 failures within 1min exceed the failure-rate limit of 2 per 1min"
        );

        let mut policy = RestartPolicy::new(&failure_rate(2, 60_000), 0);
        policy.on_failure(0);
        policy.on_failure(30_000);
        // Just over an interval later the first failure has left the window.
        assert_eq!(delay_ms(policy.on_failure(60_001)), 500);
        assert_eq!(delay_ms(policy.on_failure(120_002)), 500);
        assert_eq!(delay_ms(policy.on_failure(120_003)), 500, "60_001 is out of the window by now");
        assert!(matches!(policy.on_failure(120_004), RestartDecision::GiveUp { .. }));
        assert_eq!(policy.restarts(), 5);
        assert_eq!(policy.describe(), "failure-rate: at most 2 failures per 1min, 500ms delay");
    }

    #[test]
    fn failure_rate_history_fills_the_window() {
        let mut policy = RestartPolicy::new(&failure_rate(1, 60_000), 0).with_history(&[0, 100_000]);
        assert_eq!(policy.restarts(), 2);
        assert!(matches!(policy.on_failure(130_000), RestartDecision::GiveUp { .. }));
        let mut policy = RestartPolicy::new(&failure_rate(1, 60_000), 0).with_history(&[0, 100_000]);
        assert_eq!(delay_ms(policy.on_failure(170_000)), 500);
    }

    #[test]
    fn exponential_delay_grows_to_the_cap() {
        let mut policy = RestartPolicy::new(&exponential(0.0, u32::MAX), 7);
        let delays: Vec<u64> = (0..6).map(|i| delay_ms(policy.on_failure(i * 1_000))).collect();
        assert_eq!(delays, vec![1_000, 2_000, 4_000, 8_000, 10_000, 10_000]);
        assert_eq!(
            policy.describe(),
            "exponential-delay: 1s initial backoff, x2 per failure up to 10s, 0% jitter, reset after 1min without \
             failure, unlimited attempts"
        );
    }

    #[test]
    fn exponential_delay_resets_after_a_quiet_period() {
        let mut policy = RestartPolicy::new(&exponential(0.0, u32::MAX), 7);
        assert_eq!(delay_ms(policy.on_failure(0)), 1_000);
        assert_eq!(delay_ms(policy.on_failure(1_000)), 2_000);
        // Exactly the threshold after the last failure is not over it.
        assert_eq!(delay_ms(policy.on_failure(61_000)), 4_000);
        // More than the threshold: back to the initial backoff.
        assert_eq!(delay_ms(policy.on_failure(121_001)), 1_000);

        // The quiet period counts from reaching RUNNING, not from the failure.
        let mut policy = RestartPolicy::new(&exponential(0.0, u32::MAX), 7);
        policy.on_failure(0);
        policy.on_running(50_000);
        assert_eq!(delay_ms(policy.on_failure(100_000)), 2_000, "only 50s of running");
        policy.on_running(100_000);
        assert_eq!(delay_ms(policy.on_failure(160_001)), 1_000);
    }

    #[test]
    fn exponential_delay_attempts_cap_between_resets() {
        let mut policy = RestartPolicy::new(&exponential(0.0, 2), 7);
        policy.on_failure(0);
        policy.on_failure(1_000);
        assert_eq!(reason(policy.on_failure(2_000)), "exhausted 2 restart attempts since the last backoff reset");
        // After a quiet period the attempts are granted again.
        assert_eq!(delay_ms(policy.on_failure(100_000)), 1_000);
        assert_eq!(policy.restarts(), 3);
    }

    #[test]
    fn exponential_delay_history_rebuilds_the_backoff() {
        let rebuilt = RestartPolicy::new(&exponential(0.0, u32::MAX), 1).with_history(&[0, 1_000, 2_000]);
        assert_eq!(rebuilt.restarts(), 3);
        let mut rebuilt = rebuilt;
        assert_eq!(delay_ms(rebuilt.on_failure(3_000)), 8_000);
        // A history with a long quiet gap before the last failure ends in a reset.
        let mut rebuilt = RestartPolicy::new(&exponential(0.0, u32::MAX), 1).with_history(&[0, 1_000, 200_000]);
        assert_eq!(delay_ms(rebuilt.on_failure(201_000)), 2_000);
    }

    #[test]
    fn jitter_stays_within_its_bounds_and_follows_the_seed() {
        let run = |seed: u64| -> Vec<u64> {
            let mut policy = RestartPolicy::new(&exponential(0.5, u32::MAX), seed);
            (0..8).map(|i| delay_ms(policy.on_failure(i * 1_000))).collect()
        };
        let bases = [1_000.0, 2_000.0, 4_000.0, 8_000.0, 10_000.0, 10_000.0, 10_000.0, 10_000.0];
        for seed in 0..50 {
            let delays = run(seed);
            for (delay, base) in delays.iter().zip(bases) {
                let delay = *delay as f64;
                assert!(delay >= base * 0.5 && delay <= (base * 1.5).min(10_000.0), "seed {seed}: {delay} vs {base}");
            }
            assert_eq!(delays, run(seed), "the same seed gives the same delays");
        }
        assert_ne!(run(1), run(2), "different seeds spread restarts differently");
    }
}

//! A paced load that remembers when each answer came and what it said, so a test can count
//! what it sent to each pool in any stretch of time (the live view's figures are checked
//! against it).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

/// One answer: when it arrived (wall clock, as the live view's points), its status and body.
#[derive(Debug, Clone)]
pub struct Answered {
    pub at: SystemTime,
    pub status: u16,
    pub body: String,
}

/// `tasks` tasks, each sending one GET every `every` (or as fast as answers come).
pub struct Paced {
    stop: Arc<AtomicBool>,
    answers: Arc<tokio::sync::Mutex<Vec<Answered>>>,
}

impl Paced {
    pub fn start(url: String, tasks: usize, every: Duration) -> Paced {
        let stop = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(tokio::sync::Mutex::new(Vec::new()));
        for _ in 0..tasks {
            let (url, stop, answers) = (url.clone(), stop.clone(), answers.clone());
            tokio::spawn(async move {
                let c = super::client();
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                // Bounded: a load never outlives its test by much.
                let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
                while !stop.load(Ordering::Relaxed) && tokio::time::Instant::now() < deadline {
                    tick.tick().await;
                    let req = Request::get(&url)
                        .body(Full::new(Bytes::new()))
                        .expect("request");
                    let (status, body) = super::fetch(&c, req).await;
                    answers.lock().await.push(Answered {
                        at: SystemTime::now(),
                        status,
                        body,
                    });
                }
            });
        }
        Paced { stop, answers }
    }

    /// Answers that arrived in `(from, to]` and satisfy `which`.
    pub async fn count(
        &self,
        from: SystemTime,
        to: SystemTime,
        which: impl Fn(&Answered) -> bool,
    ) -> usize {
        self.answers
            .lock()
            .await
            .iter()
            .filter(|a| a.at > from && a.at <= to && which(a))
            .count()
    }

    pub async fn total(&self) -> usize {
        self.answers.lock().await.len()
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Drop for Paced {
    fn drop(&mut self) {
        self.stop();
    }
}

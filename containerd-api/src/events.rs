//! containerd's event stream: the task events a kubelet keeps pod status
//! true with (start, exit, OOM, delete), decoded; other topics by name.

use std::time::SystemTime;

use containerd_client::events::{TaskDelete, TaskExit, TaskOom, TaskStart};
use containerd_client::services::v1::SubscribeRequest;
use futures::{Stream, StreamExt};
use prost::Message;

use crate::container::to_time;
use crate::{Containerd, CtrdError, rpc};

/// One event as containerd published it.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub timestamp: Option<SystemTime>,
    pub namespace: String,
    /// `/tasks/exit`, `/containers/create`, ...
    pub topic: String,
    pub event: Event,
}

/// The events decoded; `Other` for every topic we do not act on.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    TaskStart {
        container_id: String,
        pid: u32,
    },
    /// A process of the task ended; `exec_id` is empty for its init.
    TaskExit {
        container_id: String,
        exec_id: String,
        pid: u32,
        exit_status: u32,
        exited_at: Option<SystemTime>,
    },
    TaskOom {
        container_id: String,
    },
    TaskDelete {
        container_id: String,
        pid: u32,
        exit_status: u32,
    },
    Other,
}

/// containerd's topic for each decoded event.
fn decode(topic: &str, payload: &[u8]) -> Result<Event, prost::DecodeError> {
    Ok(match topic {
        "/tasks/start" => {
            let e = TaskStart::decode(payload)?;
            Event::TaskStart {
                container_id: e.container_id,
                pid: e.pid,
            }
        }
        "/tasks/exit" => {
            let e = TaskExit::decode(payload)?;
            Event::TaskExit {
                container_id: e.container_id,
                exec_id: e.id,
                pid: e.pid,
                exit_status: e.exit_status,
                exited_at: e.exited_at.as_ref().and_then(to_time),
            }
        }
        "/tasks/oom" => Event::TaskOom {
            container_id: TaskOom::decode(payload)?.container_id,
        },
        "/tasks/delete" => {
            let e = TaskDelete::decode(payload)?;
            Event::TaskDelete {
                container_id: e.container_id,
                pid: e.pid,
                exit_status: e.exit_status,
            }
        }
        _ => Event::Other,
    })
}

impl Containerd {
    /// Events from now on, of this client's namespace, matching any of
    /// `filters` (containerd's syntax, e.g. `topic~="/tasks/"`); none: all
    /// topics. The stream ends when containerd closes it. containerd sends
    /// the response headers with the first matching event, so this returns
    /// only then: poll it beside whatever makes the events.
    pub async fn subscribe(
        &self,
        filters: &[&str],
    ) -> Result<impl Stream<Item = Result<Envelope, CtrdError>> + use<>, CtrdError> {
        // Filters are ORed by containerd: the namespace goes into each one,
        // else an unfiltered subscription would see every namespace.
        let ns = format!("namespace=={}", self.namespace);
        let filters = if filters.is_empty() {
            vec![ns]
        } else {
            filters.iter().map(|f| format!("{ns},{f}")).collect()
        };
        let stream = self
            .client
            .events()
            .subscribe(SubscribeRequest { filters })
            .await
            .map_err(rpc("events.subscribe"))?
            .into_inner();
        Ok(stream.map(|item| {
            let env = item.map_err(rpc("events.subscribe"))?;
            let event = match &env.event {
                Some(any) => decode(&env.topic, &any.value).map_err(|e| CtrdError::Event {
                    topic: env.topic.clone(),
                    msg: e.to_string(),
                })?,
                None => Event::Other,
            };
            Ok(Envelope {
                timestamp: env.timestamp.as_ref().and_then(to_time),
                namespace: env.namespace,
                topic: env.topic,
                event,
            })
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_exit_is_decoded() {
        let payload = TaskExit {
            container_id: "c1".into(),
            id: String::new(),
            pid: 42,
            exit_status: 137,
            exited_at: Some(prost_types::Timestamp {
                seconds: 10,
                nanos: 0,
            }),
        }
        .encode_to_vec();
        assert_eq!(
            decode("/tasks/exit", &payload).expect("decode"),
            Event::TaskExit {
                container_id: "c1".into(),
                exec_id: String::new(),
                pid: 42,
                exit_status: 137,
                exited_at: Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(10)),
            }
        );
        assert_eq!(
            decode("/containers/create", b"anything").expect("other"),
            Event::Other
        );
        assert!(decode("/tasks/start", b"\xff\xff").is_err());
    }
}

//! IncrementalAlterConfigs (KIP-339) of one topic through librdkafka's C
//! API: `rdkafka` wraps only AlterConfigs, which replaces a topic's whole
//! set of dynamic configs, so a change made by someone else between a read
//! and that write would be lost. Each key here is set or deleted on its
//! own; the topic's other configs are left as they are.
//!
//! The only `unsafe` of the client subcommands besides the controller id:
//! every handle made here is owned by an `Owned` guard and destroyed on
//! every path; the strings passed in live across the calls that read them.

use std::ffi::{c_char, CStr, CString};
use std::time::Duration;

use rdkafka::admin::AdminClient;
use rdkafka::bindings as rd;
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;

/// One change of an IncrementalAlterConfigs request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigOp<'a> {
    Set(&'a str, &'a str),
    /// Back to the default.
    Delete(&'a str),
}

/// Why a change was not made: the Kafka error and its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub code: RDKafkaErrorCode,
    pub message: String,
}

/// A librdkafka handle, destroyed when dropped.
struct Owned<T>(*mut T, unsafe extern "C" fn(*mut T));

impl<T> Drop for Owned<T> {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: the pointer came from the matching constructor, is
            // owned by this guard alone and is destroyed once.
            unsafe { (self.1)(self.0) }
        }
    }
}

/// Text of a C string librdkafka owns (empty when null).
///
/// # Safety
/// `p` is null or a NUL-terminated string valid for the call.
unsafe fn text(p: *const c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}

fn refused(code: RDKafkaErrorCode, message: impl Into<String>) -> Refused {
    Refused {
        code,
        message: message.into(),
    }
}

fn c_string(s: &str) -> Result<CString, Refused> {
    CString::new(s).map_err(|_| refused(RDKafkaErrorCode::InvalidArgument, "a NUL byte in a name"))
}

/// Applies `ops` to topic `topic` in one IncrementalAlterConfigs request,
/// waiting at most `timeout` for the answer.
pub fn alter_topic_configs(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
    ops: &[ConfigOp],
    timeout: Duration,
) -> Result<(), Refused> {
    let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    let name = c_string(topic)?;
    let strings: Vec<(CString, Option<CString>)> = ops
        .iter()
        .map(|op| match op {
            ConfigOp::Set(k, v) => Ok((c_string(k)?, Some(c_string(v)?))),
            ConfigOp::Delete(k) => Ok((c_string(k)?, None)),
        })
        .collect::<Result<_, Refused>>()?;
    let rk = admin.inner().native_ptr();
    // SAFETY: `rk` is the admin client's live handle, borrowed for this
    // call; every handle below is owned by a guard declared before the
    // ones that may refer to it, so they are destroyed in reverse order;
    // the C strings outlive the calls that read them.
    unsafe {
        let resource = Owned(
            rd::rd_kafka_ConfigResource_new(
                rd::rd_kafka_ResourceType_t::RD_KAFKA_RESOURCE_TOPIC,
                name.as_ptr(),
            ),
            rd::rd_kafka_ConfigResource_destroy,
        );
        if resource.0.is_null() {
            return Err(refused(RDKafkaErrorCode::Fail, "cannot make the request"));
        }
        for (key, value) in &strings {
            let op = match value {
                Some(_) => rd::rd_kafka_AlterConfigOpType_t::RD_KAFKA_ALTER_CONFIG_OP_TYPE_SET,
                None => rd::rd_kafka_AlterConfigOpType_t::RD_KAFKA_ALTER_CONFIG_OP_TYPE_DELETE,
            };
            let value = value.as_ref().map_or(std::ptr::null(), |v| v.as_ptr());
            let error = Owned(
                rd::rd_kafka_ConfigResource_add_incremental_config(
                    resource.0,
                    key.as_ptr(),
                    op,
                    value,
                ),
                rd::rd_kafka_error_destroy,
            );
            if !error.0.is_null() {
                let code = RDKafkaErrorCode::from(rd::rd_kafka_error_code(error.0));
                return Err(refused(code, text(rd::rd_kafka_error_string(error.0))));
            }
        }
        let options = Owned(
            rd::rd_kafka_AdminOptions_new(
                rk,
                rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_INCREMENTALALTERCONFIGS,
            ),
            rd::rd_kafka_AdminOptions_destroy,
        );
        if options.0.is_null() {
            return Err(refused(RDKafkaErrorCode::Fail, "cannot make the request"));
        }
        let mut errstr = [0 as c_char; 256];
        rd::rd_kafka_AdminOptions_set_request_timeout(
            options.0,
            timeout_ms,
            errstr.as_mut_ptr(),
            errstr.len(),
        );
        let queue = Owned(rd::rd_kafka_queue_new(rk), rd::rd_kafka_queue_destroy);
        if queue.0.is_null() {
            return Err(refused(RDKafkaErrorCode::Fail, "cannot make the request"));
        }
        let mut resources = [resource.0];
        rd::rd_kafka_IncrementalAlterConfigs(
            rk,
            resources.as_mut_ptr(),
            resources.len(),
            options.0,
            queue.0,
        );
        // The request's own timeout answers first; the margin only bounds
        // a client that never answers.
        let wait_ms = timeout_ms.saturating_add(5_000);
        let event = Owned(
            rd::rd_kafka_queue_poll(queue.0, wait_ms),
            rd::rd_kafka_event_destroy,
        );
        if event.0.is_null() {
            return Err(refused(RDKafkaErrorCode::OperationTimedOut, "no answer"));
        }
        let code = RDKafkaErrorCode::from(rd::rd_kafka_event_error(event.0));
        if code != RDKafkaErrorCode::NoError {
            return Err(refused(
                code,
                text(rd::rd_kafka_event_error_string(event.0)),
            ));
        }
        let result = rd::rd_kafka_event_IncrementalAlterConfigs_result(event.0);
        if result.is_null() {
            return Err(refused(RDKafkaErrorCode::Fail, "an unexpected answer"));
        }
        let mut count = 0usize;
        let answered = rd::rd_kafka_IncrementalAlterConfigs_result_resources(result, &mut count);
        if answered.is_null() || count == 0 {
            return Err(refused(
                RDKafkaErrorCode::Fail,
                "an answer without the topic",
            ));
        }
        for i in 0..count {
            let r = *answered.add(i);
            let code = RDKafkaErrorCode::from(rd::rd_kafka_ConfigResource_error(r));
            if code != RDKafkaErrorCode::NoError {
                return Err(refused(
                    code,
                    text(rd::rd_kafka_ConfigResource_error_string(r)),
                ));
            }
        }
    }
    Ok(())
}

// kafkajs traffic for the request corpus (run by corpus_capture.rs, with
// NODE_PATH set to tests/node/node_modules).
//
// Usage: node capture_kafkajs.js HOST:PORT
//
// Admin (create topics with configs, metadata, describe configs, create
// partitions, offsets, groups, delete records and a topic), a plain and a
// gzip producer with keys and headers, an idempotent producer, and a
// consumer group that reads everything back and commits. Every wait is
// bounded; any failure exits non-zero.
'use strict'

const { Kafka, logLevel, CompressionTypes, ConfigResourceTypes } = require('kafkajs')

const TOPIC = 'corpus-js'
const DOOMED = 'corpus-js-doomed'
const GROUP = 'corpus-js-group'
const RECORDS = 6
const WAIT_MS = 30_000

async function eventually (what, check) {
  const deadline = Date.now() + WAIT_MS
  while (Date.now() < deadline) {
    if (await check()) return
    await new Promise(resolve => setTimeout(resolve, 100))
  }
  throw new Error(`${what}: not reached within ${WAIT_MS} ms`)
}

function records (prefix, first, count) {
  const out = []
  for (let i = first; i < first + count; i++) {
    out.push({ key: `k${i}`, value: `${prefix} record ${i}`, partition: i % 2, headers: { h: `v${i}` } })
  }
  return out
}

async function produce (kafka) {
  const producer = kafka.producer({ allowAutoTopicCreation: false })
  await producer.connect()
  try {
    await producer.send({ topic: TOPIC, acks: -1, messages: records('kafkajs plain', 0, 2) })
    await producer.send({ topic: TOPIC, acks: -1, compression: CompressionTypes.GZIP, messages: records('kafkajs gzip', 2, 2) })
  } finally {
    await producer.disconnect()
  }
  const idempotent = kafka.producer({ idempotent: true, maxInFlightRequests: 1 })
  await idempotent.connect()
  try {
    await idempotent.send({ topic: TOPIC, acks: -1, messages: records('kafkajs idempotent', 4, 2) })
  } finally {
    await idempotent.disconnect()
  }
}

async function consume (kafka) {
  const consumer = kafka.consumer({ groupId: GROUP, sessionTimeout: 10_000, heartbeatInterval: 200, maxWaitTimeInMs: 100 })
  await consumer.connect()
  try {
    let got = 0
    await consumer.subscribe({ topics: [TOPIC], fromBeginning: true })
    await consumer.run({ eachMessage: async () => { got++ } })
    await eventually(`${RECORDS} records`, () => got >= RECORDS)
    // A few heartbeats and fetches past the end.
    await new Promise(resolve => setTimeout(resolve, 1_000))
  } finally {
    // Stopping commits what was processed, then leaves the group.
    await consumer.disconnect()
  }
}

async function main (bootstrap) {
  const kafka = new Kafka({
    clientId: 'corpus-kafkajs',
    brokers: [bootstrap],
    logLevel: logLevel.ERROR,
    connectionTimeout: 5_000,
    requestTimeout: 15_000,
    retry: { retries: 3, initialRetryTime: 100, maxRetryTime: 1_000 }
  })
  const admin = kafka.admin()
  await admin.connect()
  try {
    await admin.createTopics({
      waitForLeaders: true,
      topics: [
        { topic: TOPIC, numPartitions: 2, configEntries: [{ name: 'retention.ms', value: '3600000' }] },
        { topic: DOOMED, numPartitions: 1 }
      ]
    })
    await admin.fetchTopicMetadata({ topics: [TOPIC] })
    await admin.describeConfigs({
      includeSynonyms: false,
      resources: [{ type: ConfigResourceTypes.TOPIC, name: TOPIC, configNames: ['retention.ms'] }]
    })
    await admin.createPartitions({ timeout: 10_000, topicPartitions: [{ topic: DOOMED, count: 2 }] })

    await produce(kafka)
    await consume(kafka)

    await admin.fetchTopicOffsets(TOPIC)
    await admin.fetchTopicOffsetsByTimestamp(TOPIC, 0)
    await admin.fetchOffsets({ groupId: GROUP, topics: [TOPIC] })
    await admin.listGroups()
    await admin.describeGroups([GROUP])
    await admin.deleteTopicRecords({ topic: TOPIC, partitions: [{ partition: 0, offset: '1' }] })
    await admin.deleteGroups([GROUP])
    await admin.deleteTopics({ topics: [DOOMED], timeout: 10_000 })
    await eventually('topic deleted', async () => !(await admin.listTopics()).includes(DOOMED))
  } finally {
    await admin.disconnect()
  }
}

const bootstrap = process.argv[2]
if (!bootstrap) {
  console.error('usage: node capture_kafkajs.js HOST:PORT')
  process.exit(2)
}
main(bootstrap).then(
  () => process.exit(0),
  e => { console.error(e); process.exit(1) })

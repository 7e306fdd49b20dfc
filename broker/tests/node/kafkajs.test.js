// kafkajs as its users drive it, against a running sluice broker.
// SLUICE_BOOTSTRAP is a broker with topic auto-creation on;
// SLUICE_BOOTSTRAP_NO_AUTO one started with --auto-create-topics false.
// Run by broker/tests/node_suite.rs (`node --test`).
'use strict'

const { test } = require('node:test')
const assert = require('node:assert/strict')
const { Kafka, logLevel, CompressionTypes, ConfigResourceTypes } = require('kafkajs')

const BOOTSTRAP = process.env.SLUICE_BOOTSTRAP
const BOOTSTRAP_NO_AUTO = process.env.SLUICE_BOOTSTRAP_NO_AUTO
assert.ok(BOOTSTRAP, 'SLUICE_BOOTSTRAP must name the broker (host:port)')

// Every test and every wait below is bounded.
const TEST_TIMEOUT_MS = 60_000
const WAIT_MS = 30_000

function kafka (bootstrap = BOOTSTRAP, clientId = 'sluice-kafkajs-tests') {
  return new Kafka({
    clientId,
    brokers: [bootstrap],
    logLevel: logLevel.ERROR,
    connectionTimeout: 5_000,
    requestTimeout: 15_000,
    retry: { retries: 3, initialRetryTime: 100, maxRetryTime: 1_000 }
  })
}

// Polls `check` until it returns a truthy value or the deadline passes.
async function eventually (what, check, ms = WAIT_MS) {
  const deadline = Date.now() + ms
  let last
  while (Date.now() < deadline) {
    last = await check()
    if (last) return last
    await new Promise(resolve => setTimeout(resolve, 100))
  }
  assert.fail(`${what}: not reached within ${ms} ms (last: ${JSON.stringify(last)})`)
}

// Subscribes a consumer in `groupId` to `topic` from the beginning and
// collects messages until `count` arrived; the consumer is left running.
async function consumeAll (consumer, topic, count) {
  const got = []
  await consumer.subscribe({ topics: [topic], fromBeginning: true })
  await consumer.run({
    eachMessage: async ({ partition, message }) => {
      got.push({
        partition,
        offset: message.offset,
        key: message.key ? message.key.toString() : null,
        value: message.value.toString()
      })
    }
  })
  await eventually(`${count} messages from ${topic}`, () => got.length >= count ? got : null)
  return got
}

test('admin: create, list, describe, grow and delete topics', { timeout: TEST_TIMEOUT_MS }, async () => {
  const admin = kafka().admin()
  await admin.connect()
  try {
    const topic = 'js-admin'
    const created = await admin.createTopics({
      timeout: 10_000,
      topics: [{
        topic,
        numPartitions: 3,
        replicationFactor: 1,
        configEntries: [
          { name: 'retention.ms', value: '3600000' },
          { name: 'cleanup.policy', value: 'delete' }
        ]
      }]
    })
    assert.equal(created, true)
    // Creating it again is not an error for kafkajs: it answers false.
    assert.equal(await admin.createTopics({ topics: [{ topic, numPartitions: 3 }] }), false)

    assert.ok((await admin.listTopics()).includes(topic))

    const md = await admin.fetchTopicMetadata({ topics: [topic] })
    assert.equal(md.topics.length, 1)
    assert.equal(md.topics[0].name, topic)
    assert.deepEqual(md.topics[0].partitions.map(p => p.partitionId).sort(), [0, 1, 2])
    for (const p of md.topics[0].partitions) {
      assert.equal(p.partitionErrorCode, 0)
      assert.equal(p.leader, 1)
      assert.deepEqual(p.replicas, [1])
      assert.deepEqual(p.isr, [1])
    }

    const described = await admin.describeConfigs({
      includeSynonyms: false,
      resources: [{
        type: ConfigResourceTypes.TOPIC,
        name: topic,
        configNames: ['retention.ms', 'cleanup.policy']
      }]
    })
    assert.equal(described.resources.length, 1)
    assert.equal(described.resources[0].errorCode, 0)
    const entries = Object.fromEntries(
      described.resources[0].configEntries.map(e => [e.configName, e.configValue]))
    assert.deepEqual(entries, { 'retention.ms': '3600000', 'cleanup.policy': 'delete' })

    await admin.createPartitions({ timeout: 10_000, topicPartitions: [{ topic, count: 5 }] })
    const grown = await admin.fetchTopicMetadata({ topics: [topic] })
    assert.deepEqual(grown.topics[0].partitions.map(p => p.partitionId).sort(), [0, 1, 2, 3, 4])

    await admin.deleteTopics({ topics: [topic], timeout: 10_000 })
    await eventually('topic gone from listTopics',
      async () => !(await admin.listTopics()).includes(topic))
  } finally {
    await admin.disconnect()
  }
})

test('producer acks -1 (plain and gzip), a consumer group reads everything and commits', { timeout: TEST_TIMEOUT_MS }, async () => {
  const client = kafka()
  const admin = client.admin()
  const producer = client.producer({ allowAutoTopicCreation: false })
  const groupId = 'js-group'
  const consumer = client.consumer({ groupId, sessionTimeout: 10_000, heartbeatInterval: 1_000 })
  await admin.connect()
  await producer.connect()
  try {
    const topic = 'js-produce'
    assert.equal(await admin.createTopics({ topics: [{ topic, numPartitions: 2 }] }), true)

    const plain = []
    for (let i = 0; i < 10; i++) plain.push({ key: `k${i % 3}`, value: `plain-${i}`, partition: i % 2 })
    const gz = []
    for (let i = 0; i < 10; i++) gz.push({ key: `g${i % 3}`, value: `gzip-${i}`, partition: i % 2 })

    const r1 = await producer.send({ topic, acks: -1, messages: plain })
    const r2 = await producer.send({ topic, acks: -1, compression: CompressionTypes.GZIP, messages: gz })
    // One answer per partition, the first batch at offset 0, the second after it.
    const base = rs => Object.fromEntries(rs.map(r => [r.partition, r.baseOffset]))
    assert.deepEqual(base(r1), { 0: '0', 1: '0' })
    assert.deepEqual(base(r2), { 0: '5', 1: '5' })
    for (const r of [...r1, ...r2]) assert.equal(r.errorCode, 0)

    await consumer.connect()
    const got = await consumeAll(consumer, topic, 20)
    assert.equal(got.length, 20)
    for (const partition of [0, 1]) {
      const mine = got.filter(m => m.partition === partition)
      const want = [...plain, ...gz].filter(m => m.partition === partition)
      assert.deepEqual(mine.map(m => m.offset), want.map((_, i) => String(i)))
      assert.deepEqual(mine.map(m => [m.key, m.value]), want.map(m => [m.key, m.value]))
    }

    // Stopping the consumer commits what it processed.
    await consumer.disconnect()
    const offsets = await eventually('committed offsets', async () => {
      const [t] = await admin.fetchOffsets({ groupId, topics: [topic] })
      const o = Object.fromEntries(t.partitions.map(p => [p.partition, p.offset]))
      return o[0] === '10' && o[1] === '10' ? o : null
    })
    assert.deepEqual(offsets, { 0: '10', 1: '10' })

    const { groups } = await admin.listGroups()
    assert.ok(groups.some(g => g.groupId === groupId && g.protocolType === 'consumer'),
      JSON.stringify(groups))
  } finally {
    await consumer.disconnect()
    await producer.disconnect()
    await admin.disconnect()
  }
})

test('idempotent producer: exactly the records sent, in order', { timeout: TEST_TIMEOUT_MS }, async () => {
  const client = kafka()
  const producer = client.producer({ idempotent: true, maxInFlightRequests: 1 })
  const consumer = client.consumer({ groupId: 'js-idempotent' })
  await producer.connect()
  try {
    const topic = 'js-idempotent'
    const sent = []
    for (let batch = 0; batch < 5; batch++) {
      const messages = []
      for (let i = 0; i < 20; i++) messages.push({ key: 'same', value: `r-${batch}-${i}` })
      sent.push(...messages.map(m => m.value))
      // kafkajs requires acks -1 for an idempotent producer; the topic is auto-created.
      await producer.send({ topic, acks: -1, messages })
    }
    await consumer.connect()
    const got = await consumeAll(consumer, topic, sent.length)
    // Nothing more arrives after the expected count.
    await new Promise(resolve => setTimeout(resolve, 500))
    assert.deepEqual(got.map(m => m.value), sent)
    assert.deepEqual(got.map(m => m.offset), sent.map((_, i) => String(i)))
  } finally {
    await consumer.disconnect()
    await producer.disconnect()
  }
})

test('sending to an unknown topic without auto-creation is refused', { timeout: TEST_TIMEOUT_MS }, async () => {
  assert.ok(BOOTSTRAP_NO_AUTO, 'SLUICE_BOOTSTRAP_NO_AUTO must name a broker without auto-creation')
  const producer = kafka(BOOTSTRAP_NO_AUTO).producer({
    retry: { retries: 1, initialRetryTime: 100, maxRetryTime: 200 }
  })
  await producer.connect()
  try {
    await assert.rejects(
      producer.send({ topic: 'js-never-created', acks: -1, messages: [{ value: 'x' }] }),
      err => {
        // kafkajs wraps the broker's UNKNOWN_TOPIC_OR_PARTITION in its retry error.
        const cause = err.name === 'KafkaJSNumberOfRetriesExceeded' ? err.cause : err
        assert.equal(cause.type, 'UNKNOWN_TOPIC_OR_PARTITION', `${err.name}: ${err.message}`)
        return true
      })
  } finally {
    await producer.disconnect()
  }
  const admin = kafka(BOOTSTRAP_NO_AUTO).admin()
  await admin.connect()
  try {
    assert.ok(!(await admin.listTopics()).includes('js-never-created'))
  } finally {
    await admin.disconnect()
  }
})

test('an invalid topic name is refused', { timeout: TEST_TIMEOUT_MS }, async () => {
  const admin = kafka().admin()
  await admin.connect()
  try {
    await assert.rejects(
      admin.createTopics({ topics: [{ topic: 'bad name!', numPartitions: 1 }] }),
      err => {
        const causes = err.errors || [err]
        assert.ok(causes.some(e => e.type === 'INVALID_TOPIC_EXCEPTION'),
          `${err.name}: ${err.message} ${JSON.stringify(causes.map(e => e.type))}`)
        return true
      })
  } finally {
    await admin.disconnect()
  }
})

test('transactional producer: committed records visible, aborted ones not, offsets sent with a commit', { timeout: TEST_TIMEOUT_MS }, async () => {
  const client = kafka()
  const admin = client.admin()
  const producer = client.producer({ transactionalId: 'js-txn', idempotent: true, maxInFlightRequests: 1 })
  // readUncommitted: false (kafkajs's default, spelled out) fetches with
  // isolation level READ_COMMITTED.
  const committedReader = client.consumer({ groupId: 'js-txn-committed', readUncommitted: false })
  const everyReader = client.consumer({ groupId: 'js-txn-uncommitted', readUncommitted: true })
  await admin.connect()
  await producer.connect()
  try {
    const topic = 'js-txn'
    const source = 'js-txn-source'
    const offsetsGroup = 'js-txn-offsets'
    assert.equal(await admin.createTopics({ topics: [{ topic, numPartitions: 2 }, { topic: source, numPartitions: 2 }] }), true)

    const batch = tag => Array.from({ length: 6 }, (_, i) => ({ key: `k${i}`, value: `${tag}-${i}`, partition: i % 2 }))
    const first = batch('committed-a')
    const aborted = batch('aborted')
    const second = batch('committed-b')

    let txn = await producer.transaction()
    await txn.send({ topic, messages: first })
    await txn.sendOffsets({
      consumerGroupId: offsetsGroup,
      topics: [{ topic: source, partitions: [{ partition: 0, offset: '5' }, { partition: 1, offset: '7' }] }]
    })
    await txn.commit()
    assert.equal(txn.isActive(), false)

    txn = await producer.transaction()
    await txn.send({ topic, messages: aborted })
    // Offsets sent within an aborted transaction are dropped with it.
    await txn.sendOffsets({
      consumerGroupId: offsetsGroup,
      topics: [{ topic: source, partitions: [{ partition: 0, offset: '100' }] }]
    })
    await txn.abort()

    txn = await producer.transaction()
    await txn.send({ topic, messages: second })
    await txn.commit()

    const offsets = await eventually('offsets committed with the first transaction', async () => {
      const [t] = await admin.fetchOffsets({ groupId: offsetsGroup, topics: [source] })
      const o = Object.fromEntries(t.partitions.map(p => [p.partition, p.offset]))
      return o[0] === '5' && o[1] === '7' ? o : null
    })
    assert.deepEqual(offsets, { 0: '5', 1: '7' })

    const committed = [...first, ...second]
    await committedReader.connect()
    const got = await consumeAll(committedReader, topic, committed.length)
    // Nothing more arrives after the committed ones (the aborted records
    // are in the log, before the second transaction's).
    await new Promise(resolve => setTimeout(resolve, 1_000))
    assert.equal(got.length, committed.length)
    for (const partition of [0, 1]) {
      assert.deepEqual(
        got.filter(m => m.partition === partition).map(m => m.value),
        committed.filter(m => m.partition === partition).map(m => m.value))
    }

    await everyReader.connect()
    const every = [...first, ...aborted, ...second]
    const all = await consumeAll(everyReader, topic, every.length)
    for (const partition of [0, 1]) {
      assert.deepEqual(
        all.filter(m => m.partition === partition).map(m => m.value),
        every.filter(m => m.partition === partition).map(m => m.value))
    }
  } finally {
    await committedReader.disconnect()
    await everyReader.disconnect()
    await producer.disconnect()
    await admin.disconnect()
  }
})

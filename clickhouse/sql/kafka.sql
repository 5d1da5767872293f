-- The Kafka source of the ClickHouse-native path.
-- {db}, {brokers}, {topic}, {group} are given at install.
CREATE TABLE IF NOT EXISTS {db}.kafka_clicks (payload String)
ENGINE = Kafka
SETTINGS kafka_broker_list = '{brokers}', kafka_topic_list = '{topic}', kafka_group_name = '{group}',
         kafka_format = 'RawBLOB', kafka_num_consumers = 1, kafka_thread_per_consumer = 0;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.kafka_mv TO {db}.ingest AS
SELECT _topic AS topic, toUInt32(_partition) AS source_partition, toInt64(_offset) AS source_offset,
       toUnixTimestamp64Milli(_timestamp_ms) AS record_time_ms, payload
FROM {db}.kafka_clicks;

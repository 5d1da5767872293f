-- The adtally UDFs, declared over an installed module.
-- {module} is the module's name in system.webassembly_modules, {sha256} its hash:
-- a function is only created over exactly the module that was audited.
-- No function runs on fuel: each does bounded work per row (a record is at
-- most the core's MAX_RECORD_BYTES, a merge linear in its lists), so a
-- block of any size finishes; with fuel, the default budget ran out in a
-- 50,000-row block, and a Kafka engine hands over blocks of 65,536.
CREATE OR REPLACE FUNCTION adtally_classify LANGUAGE WASM FROM '{module}' :: 'adtally_classify'
    ARGUMENTS (payload String, record_time_ms Int64, has_record_time UInt8, config_json String)
    RETURNS Tuple(kind String, reason String, key String, ad_id String, time_ms Int64, user_id String, ip String, country String, event_id String, window_start_ms Int64, filter_ids Array(UInt32), semantics_version UInt32)
    ABI BUFFERED_V1 DETERMINISTIC SHA256_HASH '{sha256}' SETTINGS webassembly_udf_enable_fuel = false;
CREATE OR REPLACE FUNCTION adtally_parse LANGUAGE WASM FROM '{module}' :: 'adtally_parse'
    ARGUMENTS (payload String)
    RETURNS Tuple(kind String, reason String, key String, ad_id String, time_ms Int64, user_id String, ip String, country String, event_id String)
    ABI BUFFERED_V1 DETERMINISTIC SHA256_HASH '{sha256}' SETTINGS webassembly_udf_enable_fuel = false;
CREATE OR REPLACE FUNCTION adtally_parse_at LANGUAGE WASM FROM '{module}' :: 'adtally_parse_at'
    ARGUMENTS (payload String, record_time_ms Int64, max_future_skew_ms Int64)
    RETURNS Tuple(kind String, reason String, key String, ad_id String, time_ms Int64, user_id String, ip String, country String, event_id String)
    ABI BUFFERED_V1 DETERMINISTIC SHA256_HASH '{sha256}' SETTINGS webassembly_udf_enable_fuel = false;
CREATE OR REPLACE FUNCTION adtally_window_start LANGUAGE WASM FROM '{module}' :: 'adtally_window_start'
    ARGUMENTS (time_ms Int64, window_ms Int64) RETURNS Int64
    ABI BUFFERED_V1 DETERMINISTIC SHA256_HASH '{sha256}' SETTINGS webassembly_udf_enable_fuel = false;
CREATE OR REPLACE FUNCTION adtally_filter_ids LANGUAGE WASM FROM '{module}' :: 'adtally_filter_ids'
    ARGUMENTS (filters_json String, country String, ip String, user_id String) RETURNS Array(UInt32)
    ABI BUFFERED_V1 DETERMINISTIC SHA256_HASH '{sha256}' SETTINGS webassembly_udf_enable_fuel = false;
CREATE OR REPLACE FUNCTION adtally_merge_top_n LANGUAGE WASM FROM '{module}' :: 'adtally_merge_top_n'
    ARGUMENTS (lists Array(Array(Tuple(String, UInt64))), n UInt32) RETURNS Array(Tuple(String, UInt64))
    ABI BUFFERED_V1 DETERMINISTIC SHA256_HASH '{sha256}' SETTINGS webassembly_udf_enable_fuel = false;
CREATE OR REPLACE FUNCTION adtally_config LANGUAGE WASM FROM '{module}' :: 'adtally_config'
    ARGUMENTS (config_json String) RETURNS String
    ABI BUFFERED_V1 DETERMINISTIC SHA256_HASH '{sha256}' SETTINGS webassembly_udf_enable_fuel = false;
CREATE OR REPLACE FUNCTION adtally_semantics_version LANGUAGE WASM FROM '{module}' :: 'adtally_semantics_version'
    ARGUMENTS (x UInt32) RETURNS UInt32
    ABI ROW_DIRECT DETERMINISTIC SHA256_HASH '{sha256}';

"""Structural checks of template.yaml: what the style guide and the design require of every function,
queue, bucket, policy and output, and that the functions' environment matches ``Settings.from_env``."""

from __future__ import annotations

import ast
import json
import re
from typing import Any

import pytest

from cdr_policy.lambda_events import RENDER_TRIGGER_PREFIXES
from cdr_policy.settings import MAX_RENDER_REFRESH_HOURS, Settings
from tests.infra.support import NO_VALUE, REPO, Resolver

pytestmark = pytest.mark.infra

FUNCTION_DIRS = {
    "CdrFetchFunction": "cdr_fetch",
    "FeedSyncFunction": "feed_sync",
    "RenderFunction": "render",
    "PublishFunction": "publish",
    "HitsRollupFunction": "hits_rollup",
}
SQS_CONSUMERS = {"RenderFunction": "RenderQueue", "PublishFunction": "PublishQueue"}
# Event sources that invoke a function asynchronously (Lambda's own event queue, retries, destinations).
ASYNC_EVENT_TYPES = {"Schedule", "ScheduleV2", "CloudWatchEvent", "EventBridgeRule", "S3", "SNS", "IoTRule"}
FOURTEEN_DAYS = 14 * 24 * 3600
POWERTOOLS_VARS = {"POWERTOOLS_SERVICE_NAME", "POWERTOOLS_METRICS_NAMESPACE", "POWERTOOLS_LOG_LEVEL"}


def of_type(resources: dict[str, Any], type_: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in resources.items() if v["Type"] == type_}


def globals_fn(template: dict[str, Any]) -> dict[str, Any]:
    value: dict[str, Any] = template["Globals"]["Function"]
    return value


def setting(template: dict[str, Any], props: dict[str, Any], key: str) -> Any:
    return props.get(key, globals_fn(template).get(key))


def environment(template: dict[str, Any], props: dict[str, Any]) -> dict[str, Any]:
    merged = dict(globals_fn(template)["Environment"]["Variables"])
    merged.update(props.get("Environment", {}).get("Variables", {}))
    return merged


def test_the_five_functions_exist_with_their_code(
    template: dict[str, Any], functions: dict[str, dict[str, Any]]
) -> None:
    assert set(functions) == set(FUNCTION_DIRS)
    assert globals_fn(template)["Runtime"] == "python3.12"
    assert globals_fn(template)["Tracing"] == "Active"
    for name, props in functions.items():
        assert props["CodeUri"] == f"functions/{FUNCTION_DIRS[name]}/"
        assert setting(template, props, "Handler") == "app.lambda_handler"
        assert setting(template, props, "Runtime") == "python3.12"
        app = REPO / props["CodeUri"] / "app.py"
        tree = ast.parse(app.read_text())
        handlers = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "lambda_handler"]
        assert handlers, f"{app} defines no lambda_handler"
        decorators = {ast.unparse(d).split("(")[0] for d in handlers[0].decorator_list}
        assert decorators == {
            "logger.inject_lambda_context",
            "tracer.capture_lambda_handler",
            "metrics.log_metrics",
        }


def test_every_function_uses_the_shared_layer(
    template: dict[str, Any], resources: dict[str, Any], functions: dict[str, dict[str, Any]]
) -> None:
    layer = resources["SharedLayer"]
    assert layer["Type"] == "AWS::Serverless::LayerVersion"
    assert layer["Metadata"] == {"BuildMethod": "makefile"}
    assert "\nbuild-SharedLayer:" in (REPO / "layers/shared/Makefile").read_text()
    assert layer["Properties"]["ContentUri"] == "layers/shared"
    assert "python3.12" in layer["Properties"]["CompatibleRuntimes"]
    assert layer["Properties"]["CompatibleArchitectures"] == globals_fn(template)["Architectures"]
    chosen = (REPO / "layers/shared/requirements.in").read_text()
    locked = (REPO / "layers/shared/requirements.txt").read_text()
    # aws-xray-sdk (Powertools Tracer) pulls botocore into the layer, shadowing the runtime's: boto3 must
    # then come from the layer too, pinned, so that the functions import a matching pair.
    assert "aws-lambda-powertools[tracer]" in chosen and re.search(r"^aws-xray-sdk==\d", locked, re.M)
    assert re.search(r"^boto3==\d", chosen, re.M), "boto3 pinned beside botocore"
    assert re.search(r"^botocore==\d", locked, re.M)
    for props in functions.values():
        assert {"Ref": "SharedLayer"} in setting(template, props, "Layers")


def test_function_environment_matches_the_settings(
    template: dict[str, Any], functions: dict[str, dict[str, Any]], resolve: Resolver
) -> None:
    """Every variable the template sets is one ``Settings.from_env`` reads (or Powertools'), every setting
    can be set from the template, and each function's resolved environment passes validation."""

    known: set[str] = set()

    class Recording(dict[str, Any]):
        def get(self, key: str, default: Any = None) -> Any:
            known.add(key)
            return super().get(key, default)

    Settings.from_env(Recording({"STATE_BUCKET": "s", "DIST_BUCKET": "d"}))
    used: set[str] = set()
    for name, props in functions.items():
        env = {k: v for k, v in ((k, resolve(v)) for k, v in environment(template, props).items()) if v != NO_VALUE}
        assert set(env) - known - POWERTOOLS_VARS == set(), name
        used |= set(env)
        settings = Settings.from_env(env)
        assert settings.state_bucket == "cdr-policy-dev-state-123456789012-us-east-1"
        assert settings.dist_bucket == "cdr-policy-dev-dist-123456789012-us-east-1"
    # APPROVER_KEY_ID is set when the stack has an approver (ApproverPrincipalArn), which the defaults do not
    assert known - used == {"APPROVER_KEY_ID"}, "settings that no function receives"
    assert POWERTOOLS_VARS <= set(globals_fn(template)["Environment"]["Variables"])

    def own(name: str) -> set[str]:
        return set(functions[name].get("Environment", {}).get("Variables", {}))

    assert own("CdrFetchFunction") == {
        "QUALYS_SECRET_NAME", "QUALYS_PLATFORM", "QUALYS_GATEWAY_URL", "QUALYS_REQUESTS_PER_HOUR",
    }  # fmt: skip
    assert own("FeedSyncFunction") == {"ABUSEIPDB_SECRET_NAME"}
    # a promoting channel's render verifies what the channels shipped and the approvers' grants of changes
    assert own("RenderFunction") == {"PUBLISH_QUEUE_URL", "SIGNING_KEY_ID", "APPROVER_KEY_ID"}
    assert own("PublishFunction") == {"SIGNING_KEY_ID", "IDEMPOTENCY_TABLE", "APPROVER_KEY_ID"}
    assert own("HitsRollupFunction") == set()
    publish = Settings.from_env({k: resolve(v) for k, v in environment(template, functions["PublishFunction"]).items()})
    assert publish.idempotency_table == "cdr-policy-dev-idempotency"
    assert publish.signing_key_id == "<SigningKey.Arn>"
    render = Settings.from_env({k: resolve(v) for k, v in environment(template, functions["RenderFunction"]).items()})
    assert render.publish_queue_url == "https://sqs.us-east-1.amazonaws.com/123456789012/cdr-policy-dev-publish"
    assert render.signing_key_id == "<SigningKey.Arn>"


def test_parameter_defaults_match_the_settings_defaults(template: dict[str, Any]) -> None:
    defaults = Settings.from_env({"STATE_BUCKET": "s", "DIST_BUCKET": "d"})
    params = template["Parameters"]
    assert params["LookbackHours"]["Default"] == defaults.lookback_hours
    assert params["OverlapMinutes"]["Default"] == defaults.overlap_minutes
    assert params["CdrTtlHours"]["Default"] == defaults.cdr_ttl_hours
    assert params["ReputationThreshold"]["Default"] == defaults.reputation_threshold
    assert params["ChangeBudgetPercent"]["Default"] == defaults.change_budget_percent
    assert params["RenderRefreshHours"]["Default"] == defaults.render_refresh_hours
    assert params["QualysRequestsPerHour"]["Default"] == defaults.qualys_requests_per_hour
    assert (params["RenderRefreshHours"]["MinValue"], params["RenderRefreshHours"]["MaxValue"]) == (
        1,
        MAX_RENDER_REFRESH_HOURS,
    )


def test_sqs_consumers_report_partial_failures(
    template: dict[str, Any], resources: dict[str, Any], functions: dict[str, dict[str, Any]]
) -> None:
    for name, queue in SQS_CONSUMERS.items():
        events = [e for e in functions[name]["Events"].values() if e["Type"] == "SQS"]
        assert len(events) == 1, name
        props = events[0]["Properties"]
        assert props["Queue"] == {"Fn::GetAtt": [queue, "Arn"]}
        assert props["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
        assert "MaximumBatchingWindowInSeconds" in props
    render = next(iter(functions["RenderFunction"]["Events"].values()))["Properties"]
    assert render["MaximumBatchingWindowInSeconds"] == {
        "Fn::If": [
            "RenderBatchingWindowGiven",
            {"Ref": "RenderBatchingWindowSeconds"},
            {"Fn::FindInMap": ["Profiles", {"Ref": "Profile"}, "RenderBatchingWindowSeconds"]},
        ]
    }
    assert render["BatchSize"] > 10, "the debounce needs a batch larger than one write burst"
    # SQS allows a BatchSize above 10 only with a batching window of at least one second: neither the
    # parameter nor a profile may give less.
    pattern = template["Parameters"]["RenderBatchingWindowSeconds"]["AllowedPattern"]
    assert [v for v in ("0", "1", "60", "300", "301", "") if re.fullmatch(pattern, v)] == ["1", "60", "300", ""]
    assert all(1 <= p["RenderBatchingWindowSeconds"] <= 300 for p in template["Mappings"]["Profiles"].values())


def test_every_queue_has_a_dlq_and_a_long_enough_visibility_timeout(
    template: dict[str, Any], resources: dict[str, Any], functions: dict[str, dict[str, Any]]
) -> None:
    queues = of_type(resources, "AWS::SQS::Queue")
    dlqs = set()
    for queue_name in SQS_CONSUMERS.values():
        props = queues[queue_name]["Properties"]
        redrive = props["RedrivePolicy"]
        dlq = redrive["deadLetterTargetArn"]["Fn::GetAtt"][0]
        assert dlq in queues and dlq != queue_name
        assert 1 <= redrive["maxReceiveCount"] <= 10
        dlqs.add(dlq)
        consumer = next(n for n, q in SQS_CONSUMERS.items() if q == queue_name)
        timeout = setting(template, functions[consumer], "Timeout")
        assert props["VisibilityTimeout"] >= 6 * timeout, queue_name
    destinations = {failure_destination(props) for props in functions.values() if "EventInvokeConfig" in props}
    assert set(queues) == set(SQS_CONSUMERS.values()) | dlqs | destinations, (
        "a queue that is neither consumed, nor a DLQ, nor an on-failure destination"
    )
    for dlq in dlqs | destinations:
        assert queues[dlq]["Properties"]["MessageRetentionPeriod"] == FOURTEEN_DAYS


def test_every_queue_is_encrypted(resources: dict[str, Any]) -> None:
    queues = of_type(resources, "AWS::SQS::Queue")
    assert len(queues) == 5
    for name, queue in queues.items():
        # SSE-SQS: S3 notifications and EventBridge can deliver into it without a key policy of ours.
        assert queue["Properties"]["SqsManagedSseEnabled"] is True, name
        assert "KmsMasterKeyId" not in queue["Properties"], name


def failure_destination(props: dict[str, Any]) -> str:
    on_failure = props["EventInvokeConfig"]["DestinationConfig"]["OnFailure"]
    assert on_failure["Type"] == "SQS"
    target: list[str] = on_failure["Destination"]["Fn::GetAtt"]
    (queue, attribute) = target
    assert attribute == "Arn"
    return queue


def queue_alarms(resources: dict[str, Any], queue: str) -> list[dict[str, Any]]:
    return [
        a["Properties"]
        for a in of_type(resources, "AWS::CloudWatch::Alarm").values()
        if a["Properties"]["Namespace"] == "AWS/SQS"
        and a["Properties"]["Dimensions"] == [{"Name": "QueueName", "Value": {"Fn::GetAtt": [queue, "QueueName"]}}]
    ]


def test_asynchronously_invoked_functions_have_an_alarmed_failure_destination(
    resources: dict[str, Any], functions: dict[str, dict[str, Any]]
) -> None:
    """A failed (or expired) scheduled run used to be dropped silently after Lambda's retries."""
    invoked_async = {
        name
        for name, props in functions.items()
        if any(e["Type"] in ASYNC_EVENT_TYPES for e in props.get("Events", {}).values())
    }
    assert invoked_async == {"CdrFetchFunction", "FeedSyncFunction", "HitsRollupFunction"}
    for name in invoked_async:
        queue = failure_destination(functions[name])
        assert resources[queue]["Type"] == "AWS::SQS::Queue"
        (alarm,) = queue_alarms(resources, queue)
        assert alarm["MetricName"] == "ApproximateNumberOfMessagesVisible"
        assert (alarm["Threshold"], alarm["ComparisonOperator"]) == (1, "GreaterThanOrEqualToThreshold")
        assert alarm["AlarmActions"] == [{"Ref": "AlarmTopic"}]
    # SQS-triggered functions are invoked synchronously: their failures land in the source queue's DLQ.
    for name in set(functions) - invoked_async:
        assert "EventInvokeConfig" not in functions[name], name
        assert set(SQS_CONSUMERS) >= {name}


def test_render_and_publish_run_one_at_a_time_without_losing_throttled_batches(
    template: dict[str, Any], resources: dict[str, Any], functions: dict[str, dict[str, Any]]
) -> None:
    """One writer per channel: one Publish (and one Render) environment. SQS's lowest MaximumConcurrency is 2,
    so the poller's second batch is throttled; Lambda retries it until the visibility timeout, which must
    cover several runs of the first batch, and maxReceiveCount leaves room for repeated throttles."""
    for name, queue_name in SQS_CONSUMERS.items():
        props = functions[name]
        assert props["ReservedConcurrentExecutions"] == 1, name
        (event,) = props["Events"].values()
        assert event["Properties"]["ScalingConfig"] == {"MaximumConcurrency": 2}, name
        queue = resources[queue_name]["Properties"]
        assert queue["VisibilityTimeout"] >= 6 * setting(template, props, "Timeout"), name
        assert queue["RedrivePolicy"]["maxReceiveCount"] >= 5, name
    publish = next(iter(functions["PublishFunction"]["Events"].values()))["Properties"]
    # A render's requests (one per channel, sent within seconds) reach Publish as one batch.
    window = publish["MaximumBatchingWindowInSeconds"]
    assert window == {"Fn::FindInMap": ["Profiles", {"Ref": "Profile"}, "PublishBatchingWindowSeconds"]}
    assert all(1 <= p["PublishBatchingWindowSeconds"] <= 10 for p in template["Mappings"]["Profiles"].values())
    assert publish["BatchSize"] >= 10


def test_schedules(functions: dict[str, dict[str, Any]], template: dict[str, Any]) -> None:
    expected = {
        "FeedSyncFunction": ("FeedSyncSchedule", "rate(1 hour)"),
        "HitsRollupFunction": ("HitsRollupSchedule", "rate(1 hour)"),
    }
    for name in ("CdrFetchFunction", *expected):
        (event,) = functions[name]["Events"].values()
        assert event["Type"] == "Schedule"
        if name in expected:
            parameter, default = expected[name]
            assert event["Properties"]["Schedule"] == {"Ref": parameter}
            assert template["Parameters"][parameter]["Default"] == default
        assert functions[name]["ReservedConcurrentExecutions"] == 1
        assert functions[name]["EventInvokeConfig"]["MaximumRetryAttempts"] == 0
    # CdrFetch's schedule is the profile's unless CdrFetchSchedule is given (tests/infra/test_stack.py deploys both)
    (event,) = functions["CdrFetchFunction"]["Events"].values()
    assert event["Properties"]["Schedule"] == {
        "Fn::If": [
            "CdrFetchScheduleGiven",
            {"Ref": "CdrFetchSchedule"},
            {"Fn::FindInMap": ["Profiles", {"Ref": "Profile"}, "CdrFetchSchedule"]},
        ]
    }
    params = template["Parameters"]
    assert params["CdrFetchSchedule"]["Default"] == "" and params["Profile"]["Default"] == "default"
    profiles = template["Mappings"]["Profiles"]
    assert set(params["Profile"]["AllowedValues"]) == set(profiles) == {"default", "fast"}
    assert profiles["default"]["CdrFetchSchedule"] == "rate(15 minutes)"
    assert profiles["fast"]["CdrFetchSchedule"] == "rate(1 minute)"  # EventBridge's shortest rate


def test_state_bucket_notifies_the_render_queue_for_indicators_and_config(
    resources: dict[str, Any], resolve: Resolver
) -> None:
    bucket = resources["StateBucket"]
    configs = bucket["Properties"]["NotificationConfiguration"]["QueueConfigurations"]
    for config in configs:
        assert config["Event"] == "s3:ObjectCreated:*"
        assert config["Queue"] == {"Fn::GetAtt": ["RenderQueue", "Arn"]}
    prefixes = [rule["Value"] for c in configs for rule in c["Filter"]["S3Key"]["Rules"] if rule["Name"] == "prefix"]
    assert tuple(prefixes) == RENDER_TRIGGER_PREFIXES  # what the Render handler accepts
    # No circular dependency: the queue policy names the bucket by its constructed ARN, and the bucket
    # waits for the policy.
    assert "RenderQueuePolicy" in bucket["DependsOn"]
    statements = resources["RenderQueuePolicy"]["Properties"]["PolicyDocument"]["Statement"]
    (statement,) = [s for s in statements if s["Sid"] == "StateBucketNotifications"]
    assert statement["Principal"] == {"Service": "s3.amazonaws.com"}
    assert statement["Action"] == "sqs:SendMessage"
    source_arn = statement["Condition"]["ArnEquals"]["aws:SourceArn"]
    assert "StateBucket" not in json.dumps(source_arn)
    assert resolve(source_arn) == resolve({"Fn::GetAtt": ["StateBucket", "Arn"]})


def test_a_schedule_re_renders_every_channel_so_manifests_never_lapse(
    template: dict[str, Any], resources: dict[str, Any]
) -> None:
    rule = resources["RenderRefreshRule"]["Properties"]
    assert rule["ScheduleExpression"] == {
        "Fn::If": ["RefreshEveryHour", "rate(1 hour)", {"Fn::Sub": "rate(${RenderRefreshHours} hours)"}]
    }
    assert template["Conditions"]["RefreshEveryHour"] == {"Fn::Equals": [{"Ref": "RenderRefreshHours"}, 1]}
    # the period the channel check sees (RENDER_REFRESH_HOURS) is the schedule's
    assert globals_fn(template)["Environment"]["Variables"]["RENDER_REFRESH_HOURS"] == {"Ref": "RenderRefreshHours"}
    (target,) = rule["Targets"]
    assert target["Arn"] == {"Fn::GetAtt": ["RenderQueue", "Arn"]}
    statements = resources["RenderQueuePolicy"]["Properties"]["PolicyDocument"]["Statement"]
    (statement,) = [s for s in statements if s["Sid"] == "ScheduledRerender"]
    assert statement["Principal"] == {"Service": "events.amazonaws.com"}
    assert statement["Condition"]["ArnEquals"]["aws:SourceArn"] == {"Fn::GetAtt": ["RenderRefreshRule", "Arn"]}


def test_buckets_are_private_encrypted_versioned_and_tls_only(resources: dict[str, Any]) -> None:
    buckets = of_type(resources, "AWS::S3::Bucket")
    assert set(buckets) == {"StateBucket", "DistributionBucket", "AccessLogBucket"}
    policies = {
        p["Properties"]["Bucket"]["Ref"]: p["Properties"]["PolicyDocument"]
        for p in of_type(resources, "AWS::S3::BucketPolicy").values()
    }
    for name, bucket in buckets.items():
        props = bucket["Properties"]
        assert props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"][
            "SSEAlgorithm"
        ]
        assert props["VersioningConfiguration"] == {"Status": "Enabled"}
        assert props["PublicAccessBlockConfiguration"] == dict.fromkeys(
            ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"), True
        )
        assert bucket["DeletionPolicy"] == "Retain"
        deny = [s for s in policies[name]["Statement"] if s["Effect"] == "Deny"]
        assert deny and deny[0]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
        assert deny[0]["Action"] == "s3:*" and deny[0]["Principal"] == "*"


def test_both_buckets_log_access_to_the_access_log_bucket(resources: dict[str, Any], resolve: Resolver) -> None:
    log_bucket = resources["AccessLogBucket"]["Properties"]
    # Server access logging delivers only into SSE-S3 buckets.
    (rule,) = log_bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"] == {"SSEAlgorithm": "AES256"}
    (lifecycle,) = log_bucket["LifecycleConfiguration"]["Rules"]
    assert lifecycle["Status"] == "Enabled"
    assert lifecycle["ExpirationInDays"] == {"Ref": "LogRetentionDays"}
    assert "LoggingConfiguration" not in log_bucket
    (policy,) = [
        p["Properties"]["PolicyDocument"]
        for p in of_type(resources, "AWS::S3::BucketPolicy").values()
        if p["Properties"]["Bucket"] == {"Ref": "AccessLogBucket"}
    ]
    (delivery,) = [s for s in policy["Statement"] if s["Effect"] == "Allow"]
    assert delivery["Principal"] == {"Service": "logging.s3.amazonaws.com"}
    assert delivery["Action"] == "s3:PutObject"
    allowed_sources = {resolve(arn) for arn in delivery["Condition"]["ArnLike"]["aws:SourceArn"]}
    allowed_keys = {resolve(arn) for arn in delivery["Resource"]}
    assert delivery["Condition"]["StringEquals"] == {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}
    prefixes = set()
    for name in ("StateBucket", "DistributionBucket"):
        bucket = resources[name]
        logging = bucket["Properties"]["LoggingConfiguration"]
        assert logging["DestinationBucketName"] == {"Ref": "AccessLogBucket"}, name
        prefixes.add(logging["LogFilePrefix"])
        assert resolve({"Fn::GetAtt": [name, "Arn"]}) in allowed_sources, name
        assert f"{resolve({'Fn::GetAtt': ['AccessLogBucket', 'Arn']})}/{logging['LogFilePrefix']}*" in allowed_keys
        # Logging is turned on only once the log bucket accepts the deliveries.
        depends = bucket["DependsOn"] if isinstance(bucket["DependsOn"], list) else [bucket["DependsOn"]]
        assert "AccessLogBucketPolicy" in depends, name
    assert len(prefixes) == 2 and all(p.endswith("/") for p in prefixes), "one prefix per bucket"
    assert len(allowed_sources) == len(allowed_keys) == 2, "nothing else may write into the log bucket"


def _policy_entries(props: dict[str, Any]) -> list[Any]:
    entries: list[Any] = []
    for entry in props.get("Policies", []):
        if isinstance(entry, dict) and "Fn::If" in entry:
            entries.extend(e for e in entry["Fn::If"][1:] if e != {"Ref": "AWS::NoValue"})
        else:
            entries.append(entry)
    return entries


ALLOWED_POLICY_TEMPLATES = {
    "S3ReadPolicy": "BucketName",
    "SQSSendMessagePolicy": "QueueName",
    "DynamoDBCrudPolicy": "TableName",
    "AWSSecretsManagerGetSecretValuePolicy": "SecretArn",
}


def test_iam_is_least_privilege(
    template: dict[str, Any], resources: dict[str, Any], functions: dict[str, dict[str, Any]]
) -> None:
    assert "FullAccess" not in json.dumps(template)
    for name, props in functions.items():
        for entry in _policy_entries(props):
            assert isinstance(entry, dict), f"{name}: managed policy {entry!r}; use a scoped policy template"
            if "Statement" in entry:
                for statement in entry["Statement"]:
                    actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
                    assert all("*" not in a for a in actions), (name, actions)
                    resources_ = (
                        statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
                    )
                    assert "*" not in resources_, (name, statement)
                    if "kms:Sign" in actions:
                        assert name == "PublishFunction"
                        assert statement["Resource"] == {"Fn::GetAtt": ["SigningKey", "Arn"]}
            else:
                ((policy, args),) = entry.items()
                assert policy in ALLOWED_POLICY_TEMPLATES, (name, policy)
                assert set(args) == {ALLOWED_POLICY_TEMPLATES[policy]}, (name, policy)
    signers = [n for n, p in functions.items() if "kms:Sign" in json.dumps(p.get("Policies", []))]
    assert signers == ["PublishFunction"]
    assert not [n for n, r in resources.items() if r["Type"] == "AWS::IAM::ManagedPolicy"], (
        "clusters get their access from deploy/cluster-access, one role per cluster"
    )


def test_signing_key_and_idempotency_table(resources: dict[str, Any]) -> None:
    key = resources["SigningKey"]["Properties"]
    assert (key["KeySpec"], key["KeyUsage"]) == ("ECC_NIST_P256", "SIGN_VERIFY")
    assert "EnableKeyRotation" not in key, "asymmetric keys cannot rotate automatically"
    table = resources["IdempotencyTable"]["Properties"]
    assert table["KeySchema"] == [{"AttributeName": "id", "KeyType": "HASH"}]
    assert table["AttributeDefinitions"] == [{"AttributeName": "id", "AttributeType": "S"}]
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expiration", "Enabled": True}
    assert table["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}


DATA_KEY = {"Fn::If": ["HasDataKey", {"Fn::GetAtt": ["DataKey", "Arn"]}, {"Ref": "AWS::NoValue"}]}


def test_customer_managed_key_for_logs_and_table_is_optional_and_usable(
    template: dict[str, Any], resources: dict[str, Any], functions: dict[str, dict[str, Any]], resolve: Resolver
) -> None:
    """UseCustomerManagedKey=true puts the log groups and the table under the stack's own key, whose policy
    lets CloudWatch Logs use it for exactly these log groups and DynamoDB for this account's callers."""
    import fnmatch

    parameter = template["Parameters"]["UseCustomerManagedKey"]
    assert (parameter["Default"], parameter["AllowedValues"]) == ("false", ["false", "true"])
    assert template["Conditions"]["HasDataKey"] == {"Fn::Equals": [{"Ref": "UseCustomerManagedKey"}, "true"]}
    key = resources["DataKey"]
    assert key["Condition"] == resources["DataKeyAlias"]["Condition"] == "HasDataKey"
    assert key["Properties"]["EnableKeyRotation"] is True
    assert key["UpdateReplacePolicy"] == "Retain", "a replaced key must stay to decrypt what it encrypted"
    statements = {s["Sid"]: s for s in key["Properties"]["KeyPolicy"]["Statement"]}
    logs = statements["CloudWatchLogsOfThisStack"]
    assert resolve(logs["Principal"]["Service"]) == "logs.us-east-1.amazonaws.com"
    pattern = resolve(logs["Condition"]["ArnLike"]["kms:EncryptionContext:aws:logs:arn"])
    for name, props in functions.items():
        group = resources[props["LoggingConfig"]["LogGroup"]["Ref"]]["Properties"]
        assert group["KmsKeyId"] == DATA_KEY, name
        arn = f"arn:aws:logs:us-east-1:123456789012:log-group:{resolve(group['LogGroupName'])}"
        assert fnmatch.fnmatchcase(arn, pattern), (arn, pattern)
    assert not fnmatch.fnmatchcase("arn:aws:logs:us-east-1:123456789012:log-group:/aws/lambda/other", pattern)
    dynamodb = statements["DynamoDbForThisAccount"]["Condition"]["StringEquals"]
    assert resolve(dynamodb["kms:ViaService"]) == "dynamodb.us-east-1.amazonaws.com"
    assert dynamodb["kms:CallerAccount"] == {"Ref": "AWS::AccountId"}
    sse = resources["IdempotencyTable"]["Properties"]["SSESpecification"]
    assert sse == {"SSEEnabled": True, "SSEType": "KMS", "KMSMasterKeyId": DATA_KEY}


def test_no_function_environment_holds_a_secret(template: dict[str, Any], functions: dict[str, dict[str, Any]]) -> None:
    """The reason given for CKV_AWS_173: names, ARNs and numbers only, never a credential."""
    secret_parameters = {n for n, p in template["Parameters"].items() if p.get("NoEcho")}
    assert secret_parameters == set()
    for name, props in functions.items():
        for variable in environment(template, props):
            assert not re.search(r"PASSWORD|TOKEN|API_KEY|CREDENTIAL|SECRET$", variable), (name, variable)


def test_log_groups_have_retention(
    template: dict[str, Any], resources: dict[str, Any], functions: dict[str, dict[str, Any]], resolve: Resolver
) -> None:
    for _name, props in functions.items():
        group = props["LoggingConfig"]["LogGroup"]["Ref"]
        log_group = resources[group]
        assert log_group["Type"] == "AWS::Logs::LogGroup"
        assert log_group["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}
        assert log_group["Properties"]["KmsKeyId"] == DATA_KEY
        assert resolve(log_group["Properties"]["LogGroupName"]) == f"/aws/lambda/{resolve(props['FunctionName'])}"


def test_alarms_cover_errors_and_dead_letters(resources: dict[str, Any], functions: dict[str, dict[str, Any]]) -> None:
    alarms = of_type(resources, "AWS::CloudWatch::Alarm").values()
    watched_functions = {
        a["Properties"]["Dimensions"][0]["Value"]["Ref"] for a in alarms if a["Properties"]["MetricName"] == "Errors"
    }
    assert watched_functions == set(functions)
    watched_queues = {
        a["Properties"]["Dimensions"][0]["Value"]["Fn::GetAtt"][0]
        for a in alarms
        if a["Properties"]["MetricName"] == "ApproximateNumberOfMessagesVisible"
    }
    assert watched_queues == {"RenderDeadLetterQueue", "PublishDeadLetterQueue", "ScheduledRunFailureQueue"}
    for alarm in alarms:
        assert alarm["Properties"]["AlarmActions"] == [{"Ref": "AlarmTopic"}]
    # CloudWatch cannot use the AWS managed SNS key: the topic has its own, usable by CloudWatch.
    assert resources["AlarmTopic"]["Properties"]["KmsMasterKeyId"] == {"Ref": "AlarmTopicKey"}
    key_policy = json.dumps(resources["AlarmTopicKey"]["Properties"]["KeyPolicy"])
    assert "cloudwatch.amazonaws.com" in key_policy


def test_outputs(template: dict[str, Any]) -> None:
    expected = {
        "StateBucketName", "DistributionBucketName", "RenderQueueUrl", "RenderDeadLetterQueueUrl",
        "PublishQueueUrl", "PublishDeadLetterQueueUrl", "SigningKeyId", "SigningKeyArn",
        "SigningKeyAliasName", "IdempotencyTableName", "SharedLayerArn", "CdrFetchFunctionName",
        "FeedSyncFunctionName", "RenderFunctionName", "PublishFunctionName", "HitsRollupFunctionName",
        "AlarmTopicArn", "ScheduledRunFailureQueueUrl", "AccessLogBucketName", "DashboardName",
        "ApproverRoleArn", "ApproverKeyArn",
    }  # fmt: skip
    assert set(template["Outputs"]) == expected
    for output in template["Outputs"].values():
        assert output["Description"]


def test_the_dashboard_shows_the_pipeline_metrics_and_every_function(
    resources: dict[str, Any], functions: dict[str, dict[str, Any]]
) -> None:
    body = resources["PipelineDashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    referenced = set(re.findall(r"\$\{([A-Za-z]+)(?:\.[A-Za-z]+)?\}", body))
    assert set(functions) <= referenced
    assert referenced - {"AWS"} <= set(resources), "the dashboard names only resources of this stack"
    dashboard = json.loads(re.sub(r"\$\{[^}]+\}", "x", body))
    metrics = {m[1] for w in dashboard["widgets"] if w["type"] == "metric" for m in w["properties"]["metrics"]}
    documented = (REPO / "docs" / "ARCHITECTURE.md").read_text().split("## Metrics", 1)[1].split("\n## ", 1)[0]
    pipeline = {m for m in metrics if m not in (".", "...") and m[0].isupper() and m in documented}
    assert {"BundlesPublished", "BundlesHeld", "FleetHits", "PrefixesLeftOut", "FeedStale"} <= pipeline
    (alarms,) = [w["properties"]["alarms"] for w in dashboard["widgets"] if w["type"] == "alarm"]
    shown = set(re.findall(r"\$\{(\w+Alarm)\.Arn\}", body))
    assert len(alarms) == len(shown) and shown == set(of_type(resources, "AWS::CloudWatch::Alarm"))


def load_json(name: str) -> Any:
    return json.loads((REPO / "events" / name).read_text())


def test_sample_events_use_the_template_names(resolve: Resolver) -> None:
    """The sample events (and so the demo and handler tests) name the resources of Environment=dev."""
    state_bucket = resolve({"Ref": "StateBucket"})
    for name in (
        "sqs_s3_notification.json",
        "sqs_s3_notification_encoded_key.json",
        "sqs_s3_test_event.json",
    ):
        for record in load_json(name)["Records"]:
            assert record["eventSourceARN"] == resolve({"Fn::GetAtt": ["RenderQueue", "Arn"]})
            assert state_bucket in record["body"]
    for record in load_json("sqs_publish.json")["Records"]:
        assert record["eventSourceARN"] == resolve({"Fn::GetAtt": ["PublishQueue", "Arn"]})


def test_samconfig(template: dict[str, Any]) -> None:
    import shlex
    import tomllib

    config = tomllib.loads((REPO / "samconfig.toml").read_text())
    assert config["version"] == 0.1
    params = template["Parameters"]
    for env, stack in (("default", "cdr-policy-dev"), ("prod", "cdr-policy-prod")):
        assert config[env]["global"]["parameters"]["stack_name"] == stack
        assert config[env]["build"]["parameters"] == {"cached": True, "parallel": True}
        assert config[env]["validate"]["parameters"] == {"lint": True}
        deploy = config[env]["deploy"]["parameters"]
        assert deploy["capabilities"] == "CAPABILITY_IAM"
        assert deploy["confirm_changeset"] is True
        assert deploy["resolve_s3"] is True
        overrides = dict(item.split("=", 1) for item in shlex.split(deploy["parameter_overrides"]))
        assert overrides["Environment"] == ("dev" if env == "default" else "prod")
        for key, value in overrides.items():
            assert key in params, f"{env}: unknown parameter {key}"
            spec = params[key]
            if "AllowedValues" in spec:
                assert value in [str(v) for v in spec["AllowedValues"]], (env, key)
            if "AllowedPattern" in spec:
                assert re.fullmatch(spec["AllowedPattern"], value), (env, key)
            if spec["Type"] == "Number":
                assert spec.get("MinValue", -1e18) <= float(value) <= spec.get("MaxValue", 1e18), (env, key)


@pytest.mark.parametrize("environment_name", ["dev", "staging", "prod", "a-twelve-chr"])
def test_derived_names_are_valid(template: dict[str, Any], environment_name: str) -> None:
    from tests.infra.support import Resolver

    assert re.fullmatch(template["Parameters"]["Environment"]["AllowedPattern"], environment_name)
    resolve = Resolver(template, {"Environment": environment_name})
    for region in ("us-east-1", "ap-southeast-2"):
        resolve.parameters["AWS::Region"] = region
        for bucket in ("StateBucket", "DistributionBucket", "AccessLogBucket"):
            name = resolve({"Ref": bucket})
            assert re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", name), name
        for queue in ("RenderDeadLetterQueue", "PublishDeadLetterQueue", "ScheduledRunFailureQueue"):
            assert len(resolve({"Fn::GetAtt": [queue, "QueueName"]})) <= 80


@pytest.mark.parametrize("metric", ["BundlesHeld", "BundlesRefused", "FeedStale", "IndicatorSetUnreadable"])
def test_safety_signals_alarm(resources: dict[str, Any], metric: str) -> None:
    (alarm,) = [
        r["Properties"]
        for r in resources.values()
        if r["Type"] == "AWS::CloudWatch::Alarm" and r["Properties"].get("MetricName") == metric
    ]
    assert alarm["Namespace"] == "CdrPolicy"
    assert alarm["Dimensions"] == [{"Name": "service", "Value": "cdr-policy"}]
    assert alarm["AlarmActions"] == [{"Ref": "AlarmTopic"}]


def test_no_default_qualys_platform_and_a_rule_that_one_is_chosen(template: dict[str, Any]) -> None:
    """Issue 21 point 11: the template defaulted to US2 while the CLI refuses a default gateway."""
    params = template["Parameters"]
    assert params["QualysPlatform"]["Default"] == "" and params["QualysGatewayUrl"]["Default"] == ""
    (assertion,) = template["Rules"]["QualysGatewayChosen"]["Assertions"]
    chosen = [term["Fn::Not"][0]["Fn::Equals"][0]["Ref"] for term in assertion["Assert"]["Fn::Or"]]
    assert sorted(chosen) == ["QualysGatewayUrl", "QualysPlatform"]


def test_the_cost_guides_table_uses_each_functions_memory(
    template: dict[str, Any], functions: dict[str, dict[str, Any]]
) -> None:
    """Issue 21 point 11: the cost table put Render at 1 GB while the template gives it 512 MB."""
    costs = (REPO / "docs" / "costs.md").read_text()
    stages = {"CdrFetchFunction": "CdrFetch", "FeedSyncFunction": "FeedSync", "RenderFunction": "Render"}
    stages["PublishFunction"] = "Publish"
    for name, stage in stages.items():
        row = next(line for line in costs.splitlines() if line.startswith(f"| {stage} | "))
        memory_gb = setting(template, functions[name], "MemorySize") / 1024
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells[5] == f"{memory_gb:g} GB", row
        seconds = float(cells[4].removesuffix(" s"))
        assert float(cells[6]) == pytest.approx(seconds * memory_gb, abs=0.01), row

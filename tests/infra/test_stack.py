"""template.yaml deployed on moto (fakes/stack.py) is template.yaml: what the stack holds, read back
through each service's own API, is what the template says, resolved here independently of moto (ARNs in
AWS's documented formats). That covers the resource types moto's CloudFormation lacks and the properties
it ignores, which fakes/moto_server.py creates by hand; and the IAM checks that server adds to
moto's (resources of KMS, DynamoDB and Secrets Manager requests, S3's IAM action names, conditions)
are shown to refuse what AWS refuses and allow what it allows."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from fakes import moto_server as filled
from fakes.aws import ACCOUNT, REGION, MotoServer, moto_server
from fakes.stack import Stack, StackError, check_parameters, deploy, load_template
from tests.infra.support import REPO

pytestmark = pytest.mark.infra

FILLED_TYPES = {
    "AWS::S3::BucketPolicy",
    "AWS::SQS::QueuePolicy",
    "AWS::SNS::TopicPolicy",
    "AWS::SNS::Subscription",
    "AWS::Lambda::EventInvokeConfig",
    "AWS::CloudWatch::Alarm",
}


@pytest.fixture(scope="module")
def server() -> Iterator[MotoServer]:
    with moto_server() as running:
        yield running


@pytest.fixture(scope="module")
def stack(server: MotoServer) -> Stack:
    return deploy(server, name="cdr-policy-stacktest", parameters={"Environment": "stacktest"})


class Resolved:
    """The template's intrinsic functions as CloudFormation resolves them for the deployed ``stack``."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.template = stack.template
        self.pseudo = {"AWS::AccountId": ACCOUNT, "AWS::Region": REGION, "AWS::Partition": "aws"}

    def condition(self, name: str) -> bool:
        return bool(self(self.template["Conditions"][name]))

    def attribute(self, logical: str, attribute: str) -> str:
        kind, physical = self.stack.resources[logical]
        name = physical.rsplit("/", 1)[-1]
        arns = {
            "AWS::S3::Bucket": f"arn:aws:s3:::{physical}",
            "AWS::SQS::Queue": f"arn:aws:sqs:{REGION}:{ACCOUNT}:{name}",
            "AWS::KMS::Key": f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{physical}",
            "AWS::Events::Rule": f"arn:aws:events:{REGION}:{ACCOUNT}:rule/{physical}",
            "AWS::IAM::Role": f"arn:aws:iam::{ACCOUNT}:role/{physical}",
            "AWS::CloudWatch::Alarm": f"arn:aws:cloudwatch:{REGION}:{ACCOUNT}:alarm:{physical}",
            "AWS::Lambda::Function": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{physical}",
        }
        if attribute == "QueueName":
            return name
        assert attribute == "Arn", (logical, attribute)
        return arns[kind]

    def ref(self, name: str) -> Any:
        if name in self.pseudo:
            return self.pseudo[name]
        if name == "AWS::NoValue":
            return None
        if name in self.stack.parameters:
            return self.stack.parameters[name]
        return self.stack.physical(name)

    def __call__(self, value: Any) -> Any:
        if isinstance(value, list):
            return [r for r in (self(v) for v in value) if r is not None]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            ((fn, arg),) = value.items()
            if fn == "Ref":
                return self.ref(arg)
            if fn == "Fn::GetAtt":
                return self.attribute(*(arg if isinstance(arg, list) else arg.split(".", 1)))
            if fn == "Fn::Sub":
                text, variables = (arg, {}) if isinstance(arg, str) else (arg[0], self(arg[1]))
                return re.sub(r"\$\{([^}]+)\}", lambda m: str(variables.get(m.group(1)) or self._sub(m.group(1))), text)
            if fn == "Fn::If":
                name, yes, no = arg
                return self(yes if self.condition(name) else no)
            if fn == "Fn::Equals":
                return self(arg[0]) == self(arg[1])
            if fn == "Fn::Not":
                return not self(arg[0])
        return {k: r for k, r in ((k, self(v)) for k, v in value.items()) if r is not None}

    def _sub(self, name: str) -> str:
        if "." in name and name not in self.pseudo:
            return self.attribute(*name.split(".", 1))
        return str(self.ref(name))

    def resources(self, kind: str) -> dict[str, dict[str, Any]]:
        """The template's resources of ``kind`` that the stack creates (their conditions hold)."""
        return {
            logical: self(r.get("Properties", {}))
            for logical, r in self.template["Resources"].items()
            if r["Type"] == kind and ("Condition" not in r or self.condition(r["Condition"]))
        }


@pytest.fixture(scope="module")
def resolved(stack: Stack) -> Resolved:
    return Resolved(stack)


def test_moto_lacks_the_types_the_deploy_guide_names_and_nothing_else_is_made_by_hand(stack: Stack) -> None:
    from moto.cloudformation import parsing
    from moto.core.common_models import CloudFormationModel

    del parsing  # imported for the models it registers
    filled.install()
    native = {m.cloudformation_type() for m in CloudFormationModel.__subclasses__() if m.__module__ != filled.__name__}
    made_here = {m.cloudformation_type() for m in filled._MISSING}
    deployed = {kind for kind, _ in stack.resources.values()}
    assert made_here == FILLED_TYPES
    assert deployed - native == FILLED_TYPES - {"AWS::SNS::Subscription"}  # AlarmEmail is empty here
    assert not made_here & native
    guide = (REPO / "docs" / "deploy.md").read_text()
    assert all(f"`{kind}`" in guide for kind in FILLED_TYPES)


def test_every_resource_the_template_declares_is_in_the_stack(stack: Stack, resolved: Resolved) -> None:
    translated_logicals = set(stack.resources)
    for logical, resource in stack.template["Resources"].items():
        if "Condition" in resource and not resolved.condition(resource["Condition"]):
            assert logical not in translated_logicals
        elif not resource["Type"].startswith("AWS::Serverless::"):
            assert logical in translated_logicals, logical


def test_bucket_queue_and_topic_policies_are_the_templates(stack: Stack, resolved: Resolved) -> None:
    s3, sqs, sns = stack.client("s3"), stack.client("sqs"), stack.client("sns")
    bucket_policies = resolved.resources("AWS::S3::BucketPolicy")
    assert len(bucket_policies) == 3
    for props in bucket_policies.values():
        assert json.loads(s3.get_bucket_policy(Bucket=props["Bucket"])["Policy"]) == props["PolicyDocument"]
    (queue_policy,) = resolved.resources("AWS::SQS::QueuePolicy").values()
    for url in queue_policy["Queues"]:
        attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["Policy"])["Attributes"]
        assert json.loads(attributes["Policy"]) == queue_policy["PolicyDocument"]
    (topic_policy,) = resolved.resources("AWS::SNS::TopicPolicy").values()
    for arn in topic_policy["Topics"]:
        assert (
            json.loads(sns.get_topic_attributes(TopicArn=arn)["Attributes"]["Policy"]) == topic_policy["PolicyDocument"]
        )


def test_buckets_keys_and_alarms_are_the_templates(stack: Stack, resolved: Resolved) -> None:
    s3, kms, cloudwatch = stack.client("s3"), stack.client("kms"), stack.client("cloudwatch")
    for props in resolved.resources("AWS::S3::Bucket").values():
        bucket = props["BucketName"]
        assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == props["VersioningConfiguration"]["Status"]
        expected = [
            {
                "QueueArn": q["Queue"],
                "Events": [q["Event"]],
                "Filter": {"Key": {"FilterRules": q["Filter"]["S3Key"]["Rules"]}},
            }
            for q in props.get("NotificationConfiguration", {}).get("QueueConfigurations", [])
        ]
        actual = s3.get_bucket_notification_configuration(Bucket=bucket).get("QueueConfigurations", [])
        assert [{k: v for k, v in q.items() if k != "Id"} for q in actual] == expected
    keys = resolved.resources("AWS::KMS::Key")
    assert set(keys) == {"SigningKey", "AlarmTopicKey"}  # DataKey: UseCustomerManagedKey is false
    for logical, props in keys.items():
        metadata = kms.describe_key(KeyId=stack.physical(logical))["KeyMetadata"]
        assert (metadata["KeySpec"], metadata["KeyUsage"]) == (
            props.get("KeySpec", "SYMMETRIC_DEFAULT"),
            props.get("KeyUsage", "ENCRYPT_DECRYPT"),
        )
        policy = kms.get_key_policy(KeyId=stack.physical(logical), PolicyName="default")["Policy"]
        assert json.loads(policy) == props["KeyPolicy"]
    alarms = {a["AlarmName"]: a for a in cloudwatch.describe_alarms()["MetricAlarms"]}
    expected_alarms = resolved.resources("AWS::CloudWatch::Alarm")
    assert len(alarms) == len(expected_alarms) >= 10
    for logical, props in expected_alarms.items():
        alarm = alarms[stack.physical(logical)]
        for key in ("Namespace", "MetricName", "Statistic", "ComparisonOperator", "TreatMissingData", "AlarmActions"):
            assert alarm[key] == props[key], (logical, key)
        assert (alarm["Period"], alarm["EvaluationPeriods"], alarm["Threshold"]) == (
            props["Period"],
            props["EvaluationPeriods"],
            float(props["Threshold"]),
        )
        assert alarm["Dimensions"] == props["Dimensions"] and alarm["OKActions"] == props["OKActions"]
    for props in resolved.resources("AWS::CloudWatch::Dashboard").values():
        body = cloudwatch.get_dashboard(DashboardName=props["DashboardName"])["DashboardBody"]
        assert json.loads(body) == json.loads(props["DashboardBody"])  # the alarms' ARNs resolved as AWS does


def test_functions_their_roles_and_asynchronous_settings_are_the_translated_templates(
    stack: Stack, server: MotoServer
) -> None:
    """What the SAM transform made of the functions (roles with their inline and managed policies, the
    on-failure destinations of the scheduled ones, the layer) is what the stack's Lambda and IAM hold."""
    resolve = Resolved(stack)
    resolve.template = stack.deployed
    iam, lambda_api = stack.client("iam"), stack.client("lambda")
    layer = stack.outputs["SharedLayerArn"]
    assert re.fullmatch(rf"arn:aws:lambda:{REGION}:{ACCOUNT}:layer:cdr-policy-stacktest-shared:\d+", layer)
    roles = resolve.resources("AWS::IAM::Role")
    assert len(roles) == len(resolve.resources("AWS::Lambda::Function")) >= 5
    for logical, props in roles.items():
        name = stack.physical(logical)
        attached = {p["PolicyArn"] for p in iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"]}
        assert attached == set(props["ManagedPolicyArns"]), logical
        inline = {
            p: iam.get_role_policy(RoleName=name, PolicyName=p)["PolicyDocument"]
            for p in iam.list_role_policies(RoleName=name)["PolicyNames"]
        }
        assert inline == {p["PolicyName"]: p["PolicyDocument"] for p in props["Policies"]}, logical
    for logical, props in resolve.resources("AWS::Lambda::Function").items():
        config = lambda_api.get_function_configuration(FunctionName=props["FunctionName"])
        assert config["Role"] == props["Role"]
        assert [x["Arn"] for x in config["Layers"]] == [layer], logical
        assert (config["TracingConfig"], config["Architectures"]) == (props["TracingConfig"], props["Architectures"])
        assert config["Environment"]["Variables"] == {k: v for k, v in props["Environment"]["Variables"].items()}
    for props in resolve.resources("AWS::Lambda::EventInvokeConfig").values():
        config = lambda_api.get_function_event_invoke_config(FunctionName=props["FunctionName"])
        assert config["MaximumRetryAttempts"] == props["MaximumRetryAttempts"]
        assert config["MaximumEventAgeInSeconds"] == props["MaximumEventAgeInSeconds"]
        assert config["DestinationConfig"] == props["DestinationConfig"]


def _timings(stack: Stack) -> tuple[str, int, int]:
    """What the deployed stack's event sources say: CdrFetch's schedule, Render's and Publish's batching windows."""
    events, lambda_api = stack.client("events"), stack.client("lambda")
    rules = stack.of_type("AWS::Events::Rule")
    (schedule,) = [events.describe_rule(Name=rules[r])["ScheduleExpression"] for r in rules if r.startswith("CdrFetch")]

    def window(logical: str) -> int:
        name = stack.physical(logical)
        (mapping,) = lambda_api.list_event_source_mappings(FunctionName=name)["EventSourceMappings"]
        return int(mapping["MaximumBatchingWindowInSeconds"])

    return schedule, window("RenderFunction"), window("PublishFunction")


def test_the_profile_parameter_sets_the_schedule_and_the_batching_windows(server: MotoServer, stack: Stack) -> None:
    """One parameter switches a deployment to the fast profile (docs/time-to-protect.md); the two timing
    parameters still win when given."""
    assert stack.parameters["Profile"] == "default"
    assert _timings(stack) == ("rate(15 minutes)", 60, 5)
    fast = deploy(server, name="cdr-policy-fasttest", parameters={"Environment": "fasttest", "Profile": "fast"})
    assert _timings(fast) == ("rate(1 minute)", 1, 1)
    given = {"Environment": "giventest", "Profile": "fast", "CdrFetchSchedule": "rate(5 minutes)"}
    given["RenderBatchingWindowSeconds"] = "30"
    assert _timings(deploy(server, name="cdr-policy-giventest", parameters=given)) == ("rate(5 minutes)", 30, 1)
    with pytest.raises(StackError, match="Profile"):
        check_parameters(load_template(REPO / "template.yaml"), {"Profile": "fastest"})


def test_parameters_cloudformation_would_refuse_are_refused(stack: Stack) -> None:
    template = load_template(REPO / "template.yaml")
    assert check_parameters(template, {})["Environment"] == "dev"
    for bad in (
        {"Environment": "Demo"},
        {"QualysGatewayUrl": "http://127.0.0.1:8443"},
        {"LookbackHours": "0"},
        {"RenderBatchingWindowSeconds": "0"},
        {"QualysRequestsPerHour": "0"},
        {"QualysPlatform": "US9"},
        {"Nope": "x"},
    ):
        with pytest.raises(StackError, match="parameter"):
            check_parameters(template, bad)


# -- the IAM checks the filled server adds ---------------------------------------------------------


def _user(server: MotoServer, name: str, statements: list[dict[str, Any]]) -> dict[str, str]:
    iam = server.client("iam")
    iam.create_user(UserName=name)
    document = {"Version": "2012-10-17", "Statement": statements}
    iam.put_user_policy(UserName=name, PolicyName="test", PolicyDocument=json.dumps(document))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return {"aws_access_key_id": key["AccessKeyId"], "aws_secret_access_key": key["SecretAccessKey"]}


def _denied(call: Any, code: str = "AccessDenied") -> str:
    with pytest.raises(ClientError) as raised:
        call()
    assert raised.value.response["Error"]["Code"] == code, raised.value.response["Error"]
    return str(raised.value)


def test_kms_dynamodb_and_secrets_requests_are_checked_against_their_resource(server: MotoServer) -> None:
    kms, dynamodb, secrets = (server.client(s) for s in ("kms", "dynamodb", "secretsmanager"))
    keys = [kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["Arn"] for _ in range(2)]
    for table in ("iam-test-ours", "iam-test-other"):
        dynamodb.create_table(
            TableName=table,
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
    for secret in ("iam-test/ours", "iam-test/other"):
        secrets.create_secret(Name=secret, SecretString="{}")
    table_arn = f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/iam-test-ours"
    secret_arn = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:iam-test/ours-??????"
    creds = _user(
        server,
        "resource-test",
        [
            {"Effect": "Allow", "Action": "kms:Sign", "Resource": keys[0]},
            {"Effect": "Allow", "Action": "dynamodb:PutItem", "Resource": table_arn},
            {"Effect": "Allow", "Action": "secretsmanager:GetSecretValue", "Resource": secret_arn},
        ],
    )
    kms_as, dynamodb_as, secrets_as = (server.client(s, **creds) for s in ("kms", "dynamodb", "secretsmanager"))

    def sign(key: str) -> Any:
        return kms_as.sign(KeyId=key, Message=b"x", MessageType="RAW", SigningAlgorithm="ECDSA_SHA_256")

    assert sign(keys[0])["Signature"]
    message = _denied(lambda: sign(keys[1]), "AccessDeniedException")
    assert f"is not authorized to perform: kms:Sign on resource: {keys[1]}" in message
    dynamodb_as.put_item(TableName="iam-test-ours", Item={"id": {"S": "a"}})
    _denied(lambda: dynamodb_as.put_item(TableName="iam-test-other", Item={"id": {"S": "a"}}), "AccessDeniedException")
    assert secrets_as.get_secret_value(SecretId="iam-test/ours")["SecretString"] == "{}"
    _denied(lambda: secrets_as.get_secret_value(SecretId="iam-test/other"), "AccessDeniedException")


def test_s3_requests_are_checked_under_their_iam_action(server: MotoServer) -> None:
    s3 = server.client("s3")
    s3.create_bucket(Bucket="iam-test-actions")
    s3.put_object(Bucket="iam-test-actions", Key="k", Body=b"x")
    creds = _user(
        server,
        "list-only",
        [{"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "arn:aws:s3:::iam-test-actions"}],
    )
    lister = server.client("s3", **creds)
    assert [o["Key"] for o in lister.list_objects_v2(Bucket="iam-test-actions")["Contents"]] == ["k"]
    _denied(lambda: lister.get_object(Bucket="iam-test-actions", Key="k"))


def test_bucket_policy_conditions_are_evaluated_on_the_request(server: MotoServer) -> None:
    """Deny statements apply only when their conditions hold for the request: its transport (this server
    speaks HTTPS, so a deny of secure transport bites and one of insecure transport does not) and the
    caller's ARN (a role session counts as its role)."""
    s3, iam = server.client("s3"), server.client("iam")
    s3.create_bucket(Bucket="iam-test-conditions")
    everything = [{"Effect": "Allow", "Action": ["s3:*", "sts:AssumeRole"], "Resource": "*"}]
    user = _user(server, "condition-test", everything)
    trust = {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:user/condition-test"}}
    iam.create_role(
        RoleName="cluster-ok",
        AssumeRolePolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{**trust, "Action": "sts:AssumeRole"}]}
        ),
    )
    iam.put_role_policy(
        RoleName="cluster-ok",
        PolicyName="s3",
        PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": everything}),
    )
    session = server.client("sts", **user).assume_role(
        RoleArn=f"arn:aws:iam::{ACCOUNT}:role/cluster-ok", RoleSessionName="condition-test"
    )
    c = session["Credentials"]
    as_role = server.client(
        "s3",
        aws_access_key_id=c["AccessKeyId"],
        aws_secret_access_key=c["SecretAccessKey"],
        aws_session_token=c["SessionToken"],
    )
    as_user = server.client("s3", **user)

    def policy(*statements: dict[str, Any]) -> None:
        s3.put_bucket_policy(
            Bucket="iam-test-conditions", Policy=json.dumps({"Version": "2012-10-17", "Statement": list(statements)})
        )

    deny = {
        "Effect": "Deny",
        "Principal": "*",
        "Action": "s3:PutObject",
        "Resource": "arn:aws:s3:::iam-test-conditions/*",
    }
    policy({**deny, "Condition": {"Bool": {"aws:SecureTransport": "false"}}})
    as_user.put_object(Bucket="iam-test-conditions", Key="a", Body=b"x")
    policy({**deny, "Condition": {"Bool": {"aws:SecureTransport": "true"}}})
    _denied(lambda: as_user.put_object(Bucket="iam-test-conditions", Key="a", Body=b"x"))
    policy({**deny, "Condition": {"ArnNotLike": {"aws:PrincipalArn": f"arn:aws:iam::{ACCOUNT}:role/cluster-*"}}})
    _denied(lambda: as_user.put_object(Bucket="iam-test-conditions", Key="a", Body=b"x"))
    as_role.put_object(Bucket="iam-test-conditions", Key="a", Body=b"x")


@pytest.mark.parametrize(
    ("operator", "actual", "expected", "holds"),
    [
        ("Bool", "true", ["true"], True),
        ("Bool", "false", ["true"], False),
        ("StringEquals", None, ["x"], False),  # a missing key matches no positive operator
        ("StringNotEquals", None, ["x"], True),  # ... and every negated one
        ("ArnNotLike", None, ["arn:aws:iam::1:role/a-*"], True),
        ("ArnNotLike", "arn:aws:iam::1:role/a-b", ["arn:aws:iam::1:role/a-*"], False),
        ("ArnLike", "arn:aws:iam::1:role/a-b", ["arn:aws:iam::1:role/a-?"], True),
        ("ArnLike", "arn:aws:iam::1:role/a-bc", ["arn:aws:iam::1:role/a-?"], False),
        ("StringEqualsIfExists", None, ["x"], True),
        ("Null", None, ["true"], True),
        ("Null", "v", ["true"], False),
    ],
)
def test_condition_operators_hold_as_in_iam(
    operator: str, actual: str | None, expected: list[str], holds: bool
) -> None:
    assert filled._holds(operator, actual, expected) is holds


def test_an_operator_the_server_cannot_evaluate_is_an_error_not_a_guess() -> None:
    with pytest.raises(NotImplementedError, match="NumericLessThan"):
        filled._holds("NumericLessThan", "1", ["2"])


def test_moto_leaves_the_queues_of_event_source_mappings_to_the_harness(stack: Stack) -> None:
    """moto would invoke a function for each message sent to a mapped queue (in Docker); here the
    message waits for the function's poller (fakes/lambda_runtime.py), as in AWS."""
    sqs = stack.client("sqs")
    url = stack.outputs["PublishQueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="{}")
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
    assert attributes["Attributes"]["ApproximateNumberOfMessages"] == "1"
    sqs.purge_queue(QueueUrl=url)

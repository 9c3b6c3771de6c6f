"""moto as this project runs it: a moto server over HTTPS whose CloudFormation deploys template.yaml
the way AWS does, and whose IAM checks see what the stack's policies say.

    python -m fakes.moto_server --port PORT --certificate PEM --key PEM

What moto lacks, filled here (``install()``), and only that:

- CloudFormation resource types moto does not implement, created through their own service when the
  stack creates them: ``AWS::S3::BucketPolicy``, ``AWS::SQS::QueuePolicy``, ``AWS::SNS::TopicPolicy``,
  ``AWS::SNS::Subscription``, ``AWS::Lambda::EventInvokeConfig`` and ``AWS::CloudWatch::Alarm`` (with
  its ``Arn``, which the stack's dashboard names);
- properties moto's own types ignore: ``AWS::IAM::Role``'s ``ManagedPolicyArns`` (and its inline
  documents stored as JSON, an ``AWS::NoValue`` entry dropped), ``AWS::S3::Bucket``'s
  ``VersioningConfiguration`` and ``NotificationConfiguration``, ``AWS::KMS::Key``'s ``KeySpec`` and
  ``KeyUsage`` (moto made every key symmetric) and its policy as JSON; an ``AWS::Lambda::LayerVersion``'s
  ``Ref`` (its ARN) and ``LayerName``; an ``AWS::Lambda::Function``'s ``Layers``, ``TracingConfig`` and
  ``Architectures``, and its environment's values as strings;
- IAM checks: S3 requests checked under their IAM action (``s3:ListBucket`` for ListObjectsV2, not
  ``s3:ListObjectsV2``), the resource of KMS, DynamoDB and Secrets Manager requests (moto checks those against
  ``*``, which no statement naming a key, table or secret matches), ``?`` in a pattern, and the
  ``Condition`` of identity and bucket policies evaluated against the request (``aws:SecureTransport``,
  ``aws:PrincipalArn``, ``aws:PrincipalAccount``, a listing's ``s3:prefix``): moto evaluates no
  operator but ``StringEquals``, so a conditional ``Deny`` (the buckets' ``DenyInsecureTransport``)
  denied every request; a refusal worded
  as AWS words it (S3's AccessDenied for a bucket policy's deny, where moto sent an empty 403; a JSON
  ``AccessDeniedException`` from a JSON-protocol service, where moto sent XML);
- serving: werkzeug's 10 ms wait after each response for unread request bytes (there are none);
- Lambda: the functions run in the harness (fakes/lambda_runtime.py), which polls the queues as
  their event source mappings say; moto's own delivery from SQS to Lambda (in Docker) is off.

Roles' trust policies keep moto's own evaluation. tests/infra/test_stack.py ties each filled resource to
the template.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import selectors
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

if TYPE_CHECKING:  # moto is imported when the server starts
    from moto.core.common_models import CloudFormationModel

# AWS managed policies (AWSLambdaBasicExecutionRole, ...) exist only when moto loads them at start.
os.environ.setdefault("MOTO_IAM_LOAD_MANAGED_POLICIES", "true")

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

_request = threading.local()  # the request being served: its scheme and headers, for IAM conditions
_installed = False


# -- IAM ---------------------------------------------------------------------------------------------


def _glob(pattern: str) -> re.Pattern[str]:
    """An IAM pattern: ``*`` any run of characters, ``?`` any one, everything else itself."""
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern) + r"\Z")


def _principal() -> str | None:
    """The ARN of the caller (a role for an assumed-role session), from the request's access key."""
    from moto.core.models import DEFAULT_ACCOUNT_ID as account_id
    from moto.iam.models import iam_backends
    from moto.sts.models import sts_backends

    match = re.search(r"Credential=([^/]+)/", getattr(_request, "authorization", ""))
    if not match:
        return None
    key = match.group(1)
    for session in sts_backends[account_id]["aws"].assumed_roles:
        if session.access_key_id == key:
            return str(session.role_arn)
    for user in iam_backends[account_id]["aws"].users.values():
        if any(k.access_key_id == key for k in user.access_keys):
            return str(user.arn)
    return None


def _context() -> dict[str, str]:
    context = {"aws:SecureTransport": "true" if getattr(_request, "scheme", "") == "https" else "false"}
    prefix = parse_qs(getattr(_request, "query", "")).get("prefix")
    if prefix:
        context["s3:prefix"] = prefix[0]  # a listing's prefix (a bucket listing of S3 is the only query here)
    principal = _principal()
    if principal is not None:
        context["aws:PrincipalArn"] = principal
        context["aws:PrincipalAccount"] = principal.split(":")[4]
    return context


def _holds(operator: str, actual: str | None, expected: list[str]) -> bool:
    """One condition operator over one key, as IAM evaluates it (a missing key matches only a negated
    operator, ``...IfExists`` and ``Null``)."""
    base = operator.removesuffix("IfExists")
    if base == "Null":
        return (actual is None) == (expected[0].lower() == "true")
    negated = "Not" in base
    if actual is None:
        return negated or operator.endswith("IfExists")
    if base in ("StringEquals", "StringNotEquals"):
        found = actual in expected
    elif base in ("StringEqualsIgnoreCase", "StringNotEqualsIgnoreCase"):
        found = actual.lower() in {e.lower() for e in expected}
    elif base in ("StringLike", "StringNotLike", "ArnEquals", "ArnNotEquals", "ArnLike", "ArnNotLike"):
        found = any(_glob(e).match(actual) for e in expected)
    elif base == "Bool":
        found = actual.lower() in {e.lower() for e in expected}
    else:
        raise NotImplementedError(f"IAM condition operator {operator} is not evaluated by fakes/moto_server.py")
    return not found if negated else found


def _conditions_hold(conditions: dict[str, dict[str, Any]], context: dict[str, str]) -> bool:
    return all(
        _holds(operator, context.get(key), [str(v) for v in (values if isinstance(values, list) else [values])])
        for operator, checks in conditions.items()
        for key, values in checks.items()
    )


# S3 API operations whose IAM action has another name (docs.aws.amazon.com/AmazonS3/latest/API/API_Operations.html).
S3_IAM_ACTIONS = {
    "ListObjects": "ListBucket",
    "ListObjectsV2": "ListBucket",
    "HeadBucket": "ListBucket",
    "HeadObject": "GetObject",
    "ListObjectVersions": "ListBucketVersions",
    "CopyObject": "PutObject",
    "CreateMultipartUpload": "PutObject",
    "UploadPart": "PutObject",
    "CompleteMultipartUpload": "PutObject",
    "ListParts": "ListMultipartUploadParts",
    "ListMultipartUploads": "ListBucketMultipartUploads",
    "DeleteObjects": "DeleteObject",
    "GetBucketNotificationConfiguration": "GetBucketNotification",
    "PutBucketNotificationConfiguration": "PutBucketNotification",
    "GetBucketLifecycleConfiguration": "GetLifecycleConfiguration",
    "PutBucketLifecycleConfiguration": "PutLifecycleConfiguration",
}


@functools.cache
def _json_protocol(service: str) -> bool:
    import botocore.session

    model = botocore.session.get_session().get_service_model(service)
    return str(model.protocol) in ("json", "rest-json")


def _install_iam() -> None:
    from moto.core.exceptions import AccessDeniedError, JsonRESTError
    from moto.iam.access_control import (
        IAMPolicyStatement,
        IAMRequest,
        IAMRequestBase,
        PermissionResult,
        S3IAMRequest,
    )
    from moto.s3.exceptions import S3AccessDeniedError
    from moto.s3.models import FakeBucket

    moto_is_action_permitted = IAMPolicyStatement.is_action_permitted

    def is_action_permitted(
        self: IAMPolicyStatement,
        action: str,
        resource: str = "*",
        principal: str | None = None,
        incoming_condition_values: dict[str, str] | None = None,
    ) -> PermissionResult:
        condition = self._statement.get("Condition")
        if principal is not None or incoming_condition_values or not condition:
            return moto_is_action_permitted(self, action, resource, principal, incoming_condition_values)
        # An identity or bucket policy: a statement whose conditions do not hold does not apply.
        if not _conditions_hold(condition, _context()):
            return PermissionResult.NEUTRAL
        unconditional = IAMPolicyStatement({k: v for k, v in self._statement.items() if k != "Condition"})
        return moto_is_action_permitted(unconditional, action, resource, None, None)

    IAMPolicyStatement.is_action_permitted = is_action_permitted  # type: ignore[method-assign]

    # S3 answers a request its bucket policy denies with an AccessDenied error; moto with an empty 403.
    moto_bucket_permission = FakeBucket.get_permission

    def bucket_permission(self: FakeBucket, action: str, resource: str) -> Any:
        result = moto_bucket_permission(self, action, resource)
        if result == PermissionResult.DENIED:
            raise S3AccessDeniedError()
        return result

    FakeBucket.get_permission = bucket_permission  # type: ignore[method-assign]

    # The refusal as AWS words it (naming the resource), and in the JSON shape of a JSON-protocol service
    # (KMS, SQS, DynamoDB, Secrets Manager, Lambda): moto's XML made botocore's message the raw document.
    moto_check = IAMRequestBase.check_action_permitted

    def check_action_permitted(self: IAMRequestBase, resource: str) -> None:
        setattr(self, "_resource", resource)  # noqa: B010 (an attribute of ours on moto's request)
        moto_check(self, resource)

    def access_denied(self: IAMRequest) -> None:
        message = f"User: {self._access_key.arn} is not authorized to perform: {self._action}"
        resource = getattr(self, "_resource", "*")
        message += f" on resource: {resource}" if resource != "*" else ""
        if _json_protocol(self._service):
            raise JsonRESTError("AccessDeniedException", message)
        raise AccessDeniedError(user_arn=self._access_key.arn, action=message.split("perform: ", 1)[1])

    IAMRequestBase.check_action_permitted = check_action_permitted  # type: ignore[method-assign]
    IAMRequest._raise_access_denied = access_denied  # type: ignore[method-assign]

    # moto checks an S3 request's API operation as its IAM action; IAM has its own names for some.
    moto_s3_request = S3IAMRequest.__init__

    def s3_request(self: S3IAMRequest, *args: Any, **kwargs: Any) -> None:
        moto_s3_request(self, *args, **kwargs)
        operation = self._action.split(":", 1)[1]
        self._action = f"s3:{S3_IAM_ACTIONS.get(operation, operation)}"

    S3IAMRequest.__init__ = s3_request  # type: ignore[method-assign, assignment]  # patching moto's class
    IAMPolicyStatement._match = staticmethod(lambda pattern, string: _glob(pattern).match(string))  # type: ignore[method-assign]

    from moto.dynamodb.responses import DynamoHandler
    from moto.kms.responses import KmsResponse
    from moto.secretsmanager.responses import SecretsManagerResponse

    def key_arn(self: KmsResponse) -> str:
        key_id = self._get_param("KeyId")
        if not key_id:
            return "*"
        try:
            return str(self.kms_backend.describe_key(key_id).arn)
        except Exception:  # an unknown key or alias: the ARN asked for
            return f"arn:aws:kms:{self.region}:{self.current_account}:{key_id}"

    def table_arn(self: DynamoHandler) -> str:
        name = self._get_param("TableName")
        return f"arn:aws:dynamodb:{self.region}:{self.current_account}:table/{name}" if name else "*"

    def secret_arn(self: SecretsManagerResponse) -> str:
        secret_id = self._get_param("SecretId")
        if not secret_id:
            return "*"
        secret = self.backend.secrets.get(secret_id)
        return (
            str(secret.arn)
            if secret
            else f"arn:aws:secretsmanager:{self.region}:{self.current_account}:secret:{secret_id}"
        )

    # A request without a body or query string (Lambda's GETs) was signed as if its headers were its
    # body (moto puts the headers where the query string would be): SignatureDoesNotMatch.
    moto_create_aws_request = IAMRequestBase._create_aws_request

    def create_aws_request(self: IAMRequestBase) -> Any:
        if self._method in ("GET", "HEAD", "DELETE") and not self._body:
            original, self._data = self._data, {}
            try:
                return moto_create_aws_request(self)
            finally:
                self._data = original
        return moto_create_aws_request(self)

    IAMRequestBase._create_aws_request = create_aws_request  # type: ignore[method-assign]

    KmsResponse._determine_resource = key_arn  # type: ignore[attr-defined]
    DynamoHandler._determine_resource = table_arn  # type: ignore[attr-defined]
    SecretsManagerResponse._determine_resource = secret_arn  # type: ignore[attr-defined]


# -- CloudFormation ----------------------------------------------------------------------------------


Finish = Callable[[Any, dict[str, Any], str, str], None]


def _completed(model: Any, finish: Finish, prepare: Callable[[dict[str, Any]], None] | None = None) -> None:
    """moto's own creation of ``model`` from a template, with ``prepare(properties)`` before it and
    ``finish(resource, properties, account, region)`` after it, for what moto gets wrong or ignores."""
    moto_create = model.create_from_cloudformation_json.__func__

    def create(
        cls: type[Any],
        /,
        resource_name: str,
        cloudformation_json: dict[str, Any],
        account_id: str,
        region_name: str,
        **kwargs: Any,
    ) -> Any:
        properties = cloudformation_json.setdefault("Properties", {})
        if prepare is not None:
            prepare(properties)
        resource = moto_create(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs)
        finish(resource, properties, account_id, region_name)
        return resource

    model.create_from_cloudformation_json = classmethod(create)


def _install_cloudformation() -> None:
    from moto.awslambda.models import LambdaFunction, LayerVersion
    from moto.cloudformation import parsing
    from moto.core.common_models import CloudFormationModel
    from moto.iam.models import Role, iam_backends
    from moto.kms.models import Key, kms_backends
    from moto.s3.models import FakeBucket, s3_backends

    def role_documents(p: dict[str, Any]) -> None:
        p["Policies"] = [
            {**policy, "PolicyDocument": json.dumps(policy["PolicyDocument"])}
            for policy in p.get("Policies", [])
            if policy is not None  # an !If that chose AWS::NoValue
        ]

    def role(resource: Any, p: dict[str, Any], account: str, region: str) -> None:
        for arn in p.get("ManagedPolicyArns", []):
            iam_backends[account]["aws"].attach_role_policy(arn, resource.name)

    def bucket(resource: Any, p: dict[str, Any], account: str, region: str) -> None:
        backend = s3_backends[account]["aws"]
        if "VersioningConfiguration" in p:
            backend.put_bucket_versioning(resource.name, p["VersioningConfiguration"]["Status"])
        if "NotificationConfiguration" in p:
            backend.put_bucket_notification_configuration(resource.name, _notifications(p["NotificationConfiguration"]))

    def key(p: dict[str, Any], account: str, region: str) -> Key:
        # moto made every key symmetric: the template's spec and usage, and its policy as JSON
        made = kms_backends[account][region].create_key(
            policy=json.dumps(p["KeyPolicy"]),
            key_usage=p.get("KeyUsage", "ENCRYPT_DECRYPT"),
            key_spec=p.get("KeySpec", "SYMMETRIC_DEFAULT"),
            description=p.get("Description", ""),
            tags=p.get("Tags", []),
            multi_region=bool(p.get("MultiRegion", False)),
        )
        made.key_rotation_status = bool(p.get("EnableKeyRotation", False))
        made.enabled = bool(p.get("Enabled", True))
        return made

    def function(resource: Any, p: dict[str, Any], account: str, region: str) -> None:
        resource.layers = resource._get_layers_data(p.get("Layers", []))
        resource.tracing_config = p.get("TracingConfig") or resource.tracing_config
        resource.architectures = p.get("Architectures", resource.architectures)
        # Lambda takes strings only (CloudFormation passes a Number parameter as one; moto as an int)
        resource.environment_vars = {k: _text(v) for k, v in resource.environment_vars.items()}

    _completed(Role, role, prepare=role_documents)
    _completed(FakeBucket, bucket)
    Key.create_from_cloudformation_json = classmethod(  # type: ignore[method-assign,assignment]
        lambda cls, name, cloudformation_json, account_id, region_name, **kwargs: key(
            cloudformation_json["Properties"], account_id, region_name
        )
    )
    _completed(LambdaFunction, function)

    # A layer version's Ref is its ARN (moto gave its Python repr to the functions and the outputs), and
    # its name the template's LayerName (moto looked for a property "LayerVersion" and made up a name).
    LayerVersion.physical_resource_id = property(lambda self: self.arn)  # type: ignore[attr-defined]
    LayerVersion.cloudformation_name_type = staticmethod(lambda: "LayerName")  # type: ignore[method-assign]

    for model in _MISSING:
        assert issubclass(model, CloudFormationModel)
    parsing.get_model_list.cache_clear()
    parsing.get_model_map.cache_clear()
    parsing.get_name_type_map.cache_clear()


def _text(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _notifications(cfn: dict[str, Any]) -> dict[str, Any]:
    """A bucket's NotificationConfiguration as CloudFormation writes it, as S3's API takes it."""
    out: dict[str, Any] = {}
    for cfn_key, api_key, target in (
        ("QueueConfigurations", "QueueConfiguration", "Queue"),
        ("TopicConfigurations", "TopicConfiguration", "Topic"),
        ("LambdaConfigurations", "CloudFunctionConfiguration", "CloudFunction"),
    ):
        configurations = []
        for item in cfn.get(cfn_key, []):
            entry: dict[str, Any] = {target: item.get(target, item.get("Function")), "Event": [item["Event"]]}
            rules = item.get("Filter", {}).get("S3Key", {}).get("Rules")
            if rules:
                entry["Filter"] = {"S3Key": {"FilterRule": rules}}
            configurations.append(entry)
        if configurations:
            out[api_key] = configurations
    return out


Make = Callable[[dict[str, Any], str, str, str], str]


Attribute = Callable[[str, str, str], str]


def _model(
    kind: str, make: Make, name_property: str = "", attributes: dict[str, Attribute] | None = None
) -> type[CloudFormationModel]:
    """A CloudFormation type moto lacks: ``make(properties, account, region, name)`` creates the resource
    through its service when the stack creates it and returns its physical id. ``name_property``: the
    property holding the resource's name (CloudFormation generates one when it is absent);
    ``attributes``: what ``Fn::GetAtt`` returns, from (physical id, account, region)."""
    from moto.core.common_models import CloudFormationModel

    known = attributes or {}

    def create(
        cls: type[Any],
        /,
        resource_name: str,
        cloudformation_json: dict[str, Any],
        account_id: str,
        region_name: str,
        **kwargs: Any,
    ) -> Any:
        model = cls()
        model.physical_resource_id = make(cloudformation_json["Properties"], account_id, region_name, resource_name)
        model.account_id, model.region_name = account_id, region_name
        return model

    def attribute(self: Any, name: str) -> str:
        return known[name](self.physical_resource_id, self.account_id, self.region_name)

    namespace = {
        "__module__": __name__,
        "cloudformation_type": staticmethod(lambda: kind),
        "cloudformation_name_type": staticmethod(lambda: name_property),
        "has_cfn_attr": classmethod(lambda cls, attr: attr in known),
        "get_cfn_attribute": attribute,
        "create_from_cloudformation_json": classmethod(create),
    }
    model = type(kind.replace("::", ""), (CloudFormationModel,), namespace)
    assert issubclass(model, CloudFormationModel)
    return model


def _missing_models() -> list[type[CloudFormationModel]]:
    from moto.awslambda.models import lambda_backends
    from moto.cloudwatch.models import cloudwatch_backends
    from moto.s3.models import s3_backends
    from moto.sns.models import sns_backends
    from moto.sqs.models import sqs_backends

    def bucket_policy(p: dict[str, Any], account: str, region: str, name: str) -> str:
        s3_backends[account]["aws"].put_bucket_policy(p["Bucket"], json.dumps(p["PolicyDocument"]).encode())
        return name

    def queue_policy(p: dict[str, Any], account: str, region: str, name: str) -> str:
        for url in p["Queues"]:
            sqs_backends[account][region].set_queue_attributes(
                url.rsplit("/", 1)[1], {"Policy": json.dumps(p["PolicyDocument"])}
            )
        return name

    def topic_policy(p: dict[str, Any], account: str, region: str, name: str) -> str:
        for arn in p["Topics"]:
            sns_backends[account][region].set_topic_attribute(arn, "policy", json.dumps(p["PolicyDocument"]))
        return name

    def subscription(p: dict[str, Any], account: str, region: str, name: str) -> str:
        return str(sns_backends[account][region].subscribe(p["TopicArn"], p["Endpoint"], p["Protocol"]).arn)

    def event_invoke_config(p: dict[str, Any], account: str, region: str, name: str) -> str:
        config = {k: v for k, v in p.items() if k not in ("FunctionName", "Qualifier")}
        lambda_backends[account][region].put_function_event_invoke_config(p["FunctionName"], config)
        return name

    def alarm(p: dict[str, Any], account: str, region: str, name: str) -> str:
        cloudwatch_backends[account][region].put_metric_alarm(
            name=name,
            namespace=p["Namespace"],
            metric_name=p["MetricName"],
            comparison_operator=p["ComparisonOperator"],
            evaluation_periods=int(p["EvaluationPeriods"]),
            datapoints_to_alarm=int(p["DatapointsToAlarm"]) if "DatapointsToAlarm" in p else None,
            period=int(p["Period"]),
            threshold=float(p["Threshold"]),
            statistic=p["Statistic"],
            description=p.get("AlarmDescription", ""),
            dimensions=p.get("Dimensions", []),
            alarm_actions=p.get("AlarmActions", []),
            ok_actions=p.get("OKActions", []),
            treat_missing_data=p.get("TreatMissingData"),
        )
        return name

    def alarm_arn(name: str, account: str, region: str) -> str:
        return f"arn:aws:cloudwatch:{region}:{account}:alarm:{name}"

    return [
        _model("AWS::S3::BucketPolicy", bucket_policy),
        _model("AWS::SQS::QueuePolicy", queue_policy),
        _model("AWS::SNS::TopicPolicy", topic_policy),
        _model("AWS::SNS::Subscription", subscription),
        _model("AWS::Lambda::EventInvokeConfig", event_invoke_config),
        _model("AWS::CloudWatch::Alarm", alarm, name_property="AlarmName", attributes={"Arn": alarm_arn}),
    ]


_MISSING: list[type[CloudFormationModel]] = []


# -- Lambda ------------------------------------------------------------------------------------------


class _PolledByTheHarness(dict[str, Any]):
    """A queue's event source mappings, kept for the Lambda API; moto's own delivery finds none to call
    (fakes/lambda_runtime.py polls the queue with the function's role, as Lambda does)."""

    def items(self) -> Iterator[tuple[str, Any]]:  # type: ignore[override]
        return iter(())


def _install_lambda() -> None:
    from moto.sqs.models import Queue

    moto_init = Queue.__init__

    def init(self: Queue, *args: Any, **kwargs: Any) -> None:
        moto_init(self, *args, **kwargs)
        self.lambda_event_source_mappings = _PolledByTheHarness()

    Queue.__init__ = init  # type: ignore[method-assign]


class _NoLinger(selectors.DefaultSelector):
    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        return super().select(0)


def _install_serving() -> None:
    """werkzeug's server (moto's) waits 10 ms after every response for request bytes the application left
    unread, to discard them before it closes the connection; moto reads whole requests, so that wait
    only added 10 ms to each of the hundreds of requests of a run."""
    import types

    from werkzeug import serving

    # a stand-in for the module werkzeug imported
    serving.selectors = types.SimpleNamespace(DefaultSelector=_NoLinger, EVENT_READ=selectors.EVENT_READ)  # type: ignore[attr-defined, assignment]


def install() -> None:
    """Fill moto's gaps (above) in this process; idempotent."""
    global _installed
    if _installed:
        return
    _installed = True
    _install_serving()
    _install_iam()
    _MISSING.extend(_missing_models())
    _install_cloudformation()
    _install_lambda()


# -- serving -----------------------------------------------------------------------------------------


def _remember_request(app: WsgiApp) -> WsgiApp:
    def remembering(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        _request.scheme = environ.get("wsgi.url_scheme", "http")
        _request.authorization = environ.get("HTTP_AUTHORIZATION", "")
        _request.query = environ.get("QUERY_STRING", "")
        return app(environ, start_response)

    return remembering


def make_server(
    host: str,
    port: int,
    *,
    certificate: str | None,
    key: str | None,
    wrap: Callable[[WsgiApp], WsgiApp] | None = None,
) -> Any:
    """moto's WSGI application with the fills, on ``host:port`` over HTTPS; ``wrap`` puts a middleware
    of the caller's around it (make costs counts requests). Without a ``certificate``: over HTTP, each
    request taken as having come over TLS (as behind a proxy that terminates it), for a fleet of clients
    whose handshakes (one a request: moto closes each connection) would be this machine's CPU."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    install()
    app: WsgiApp = _remember_request(DomainDispatcherApplication(create_backend_app))
    if wrap is not None:
        app = wrap(app)
    if certificate is None or key is None:
        return pooled_server(host, port, _tls_terminated(app))
    return pooled_server(host, port, app, ssl_context=(certificate, key))


WORKERS = 32  # requests served at once; more wait in the listen queue, as at a server under load
LISTEN_QUEUE = 4096  # connections waiting for a worker (the kernel caps it at net.core.somaxconn)


def pooled_server(host: str, port: int, app: WsgiApp, **options: Any) -> Any:
    """werkzeug's server (moto's request handler) with a fixed pool of ``WORKERS`` threads instead of a
    thread for every connection. moto serialises each request's dispatch on one lock: a fleet of clients
    opening hundreds of connections at once left hundreds of threads queueing for it and for the
    interpreter, and the server answering in seconds; with a pool the rest wait in the listen queue."""
    import queue

    from moto.moto_server.werkzeug_app import MotoRequestHandler
    from werkzeug.serving import BaseWSGIServer

    class Pooled(BaseWSGIServer):
        multithread = True
        request_queue_size = LISTEN_QUEUE

        def __init__(self) -> None:
            super().__init__(host, port, app, handler=MotoRequestHandler, **options)
            self.accepted: queue.SimpleQueue[tuple[Any, Any] | None] = queue.SimpleQueue()
            for n in range(WORKERS):
                threading.Thread(target=self.serve_accepted, name=f"moto-{n}", daemon=True).start()

        def process_request(self, request: Any, client_address: Any) -> None:
            self.accepted.put((request, client_address))

        def server_close(self) -> None:  # serve_forever's end: the workers end after what they have
            super().server_close()
            for _ in range(WORKERS):
                self.accepted.put(None)

        def serve_accepted(self) -> None:
            while (accepted := self.accepted.get()) is not None:
                request, client_address = accepted
                try:
                    self.finish_request(request, client_address)
                except Exception:  # noqa: BLE001 -- socketserver's own handling: logged, the connection closed
                    self.handle_error(request, client_address)
                finally:
                    self.shutdown_request(request)

    return Pooled()


def _tls_terminated(app: WsgiApp) -> WsgiApp:
    def terminated(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        environ["wsgi.url_scheme"] = "https"
        return app(environ, start_response)

    return terminated


@contextmanager
def running(server: Any) -> Iterator[str]:
    """Serve ``server`` in a thread of this process; yields its URL."""
    thread = threading.Thread(target=server.serve_forever, name="moto", daemon=True)
    thread.start()
    try:
        yield f"https://{server.host}:{server.server_port}"
    finally:
        server.shutdown()
        thread.join()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fakes.moto_server", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--certificate", help="PEM certificate of the server (127.0.0.1); without: HTTP, taken as TLS-terminated"
    )
    parser.add_argument("--key", help="PEM private key of the certificate")
    args = parser.parse_args(argv)
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    try:
        server = make_server(args.host, args.port, certificate=args.certificate, key=args.key)
    except OSError as exc:
        print(f"moto_server: error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    server.serve_forever()
    return 0


if __name__ == "__main__":
    # As the module itself, not __main__: moto files each model class under its module's second part.
    from fakes.moto_server import main as module_main

    sys.exit(module_main())

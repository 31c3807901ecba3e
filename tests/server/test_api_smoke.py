from typing import Any

import pytest
from botocore.exceptions import ClientError


def test_create_and_get_application(codedeploy: Any, unique: Any) -> None:
    name = unique("app")
    created = codedeploy.create_application(applicationName=name)
    got = codedeploy.get_application(applicationName=name)["application"]
    assert got["applicationId"] == created["applicationId"]
    assert got["computePlatform"] == "Server"
    with pytest.raises(ClientError) as caught:
        codedeploy.get_application(applicationName=unique("missing"))
    assert caught.value.response["Error"]["Code"] == "ApplicationDoesNotExistException"

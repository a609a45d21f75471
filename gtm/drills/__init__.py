"""Failover drills against a running installation: ``gtm drill drain|failover|kill REGION``.

A drill acts on the installation named by ``--redis`` under the policy in force, drives client
load through a real caching resolver while it runs, aborts and restores when the policy's
``drills:`` limits are crossed, and writes a report (JSON, PNG timeline, HTML page).
"""

-- :checkhealth nextab: the server command, the running server, its model and version.

local M = {}

local health = vim.health or require("health")
-- Neovim 0.10 renamed report_start/report_ok/... to start/ok/...
local start = health.start or health.report_start
local ok = health.ok or health.report_ok
local warn = health.warn or health.report_warn
local error = health.error or health.report_error
local info = health.info or health.report_info

function M.check()
  local nextab = require("nextab")
  start("nextab")
  local version = vim.version()
  info(string.format("Neovim %d.%d.%d; ghost text %s", version.major, version.minor, version.patch,
    vim.fn.has("nvim-0.10") == 1 and "inline" or "at the end of the line and in virtual lines"))
  local cmd = nextab.config.cmd
  if vim.fn.executable(cmd[1]) == 1 then
    ok("server command: " .. table.concat(cmd, " "))
  else
    error("server command not found: " .. cmd[1], { "pip install nextab, or set cmd in require('nextab').setup{}" })
    return
  end
  local client = nextab.any_client()
  if not client then
    warn("no nextab server running (open a file, or check `filetypes`)")
    return
  end
  local status = nextab.status_sync(client, 2000)
  if not status then
    warn("the server did not answer nextab/status")
    return
  end
  ok(string.format("server nextab %s running (client id %d)", status.version, client.id))
  if status.state == "ready" then
    ok(string.format("model %s on %s (%s), decoding %s", status.model.name, status.model.device,
      status.model.dtype, status.decoding))
  elseif status.state == "failed" then
    error("model failed to load: " .. tostring(status.error))
  else
    warn("model " .. status.state)
  end
  if status.lastLatencyMs ~= vim.NIL and status.lastLatencyMs then
    info(string.format("last completion: %.0f ms", status.lastLatencyMs))
  end
end

return M

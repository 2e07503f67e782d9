-- :checkhealth codestral
local M = {}

local h = vim.health or require('health') -- Neovim 0.7: require('health')
local start = h.start or h.report_start
local ok = h.ok or h.report_ok
local info = h.info or h.report_info
local warn = h.warn or h.report_warn
local fail = h.error or h.report_error

function M.check()
  local codestral = require('codestral')
  local config = codestral.config

  start('Neovim')
  local version = vim.fn.execute('version'):match('NVIM v([^%s]+)') or '?'
  if vim.fn.has('nvim-0.7') == 1 then
    ok('Neovim ' .. version)
  else
    fail('Neovim ' .. version .. ': codestral needs 0.7 or newer')
  end

  start('Inline completion')
  local native = pcall(require, 'vim.lsp.inline_completion')
  if codestral.native() then
    if codestral.native_drawing_fixed() then
      ok('native vim.lsp.inline_completion (Neovim 0.12+), its ghost drawn by codestral')
    else
      warn('renderer = "native": this Neovim has no Completor class to draw through, so typed characters'
        .. ' may show twice and a stale ghost stay until the next answer (renderer = "auto" uses extmarks)')
    end
    -- Builds before neovim/neovim#35965 create each buffer's inline-completion autocmds for every
    -- buffer: say that the plugin filters the requests, where a buffer shows it.
    for _, b in ipairs(vim.api.nvim_list_bufs()) do
      local okg, cmds = pcall(vim.api.nvim_get_autocmds, { group = 'nvim.lsp.inline_completion:' .. b })
      if okg and #cmds > 0 then
        if cmds[1].buffer == nil then
          info('this build runs every buffer\'s inline-completion autocmds on each keystroke'
            .. ' (fixed by neovim/neovim#35965): codestral sends only the current buffer\'s requests')
        end
        break
      end
    end
  elseif native and config.renderer == 'extmark' then
    ok('extmark ghost text (renderer = "extmark"; native vim.lsp.inline_completion is available)')
  elseif native then
    ok('extmark ghost text (renderer = "auto": this Neovim has no Completor class to draw the native ghost through)')
  elseif config.renderer == 'native' then
    warn('renderer = "native" needs Neovim 0.12+: using extmark ghost text')
  else
    ok('extmark ghost text (no vim.lsp.inline_completion before Neovim 0.12)')
  end

  start('Server')
  if not codestral.did_setup then
    warn('require("codestral").setup() has not been called: showing the defaults')
  end
  local exe = config.cmd and config.cmd[1]
  local path = exe and vim.fn.exepath(exe) or ''
  if path == '' then
    fail(('server not found: %s'):format(tostring(exe)), {
      'put codestral-ls on $PATH (`make install` in its repo builds .venv/bin/codestral-ls),'
        .. ' or set `cmd` in setup() to its full path',
    })
  else
    local out = vim.fn.system({ path, '--version' })
    if vim.v.shell_error == 0 then
      ok(('%s (%s)'):format(path, vim.trim(out)))
    else
      fail(('%s --version failed: %s'):format(path, vim.trim(out)))
    end
  end
  info('filetypes: ' .. table.concat(config.filetypes or {}, ', '))
  local clients = (vim.lsp.get_clients or vim.lsp.get_active_clients)()
  local running = 0
  for _, c in ipairs(clients) do
    if c.name == 'codestral' then
      running = running + 1
      local caps = c.server_capabilities or c.resolved_capabilities or {}
      local yes = caps.inlineCompletionProvider and 'yes' or 'no'
      ok(('client %d running, inline completion: %s'):format(c.id, yes))
    end
  end
  if running == 0 then
    info('no codestral-ls client running (it starts on opening a buffer of one of the filetypes)')
  end
end

return M

// The edgegen NPU: engine + on-chip memories + a byte-wide memory-mapped host port.
// Host address = {region[3:0], offset[19:0]}: 0 control, 1 ACT, 2 WGT, 3 PAR, 4 LUT, 5 TAP, 6 PROG.
// Memories are written by the host while the engine is idle; ACT and control read back.
// Control: byte 0 status {error, done, busy} (write bit 0 = start), 4..7 cycles of the last run,
// 8..11 layers run, 16..31 LANES, ACT_WORDS, WGT_WORDS, PAR_WORDS (read-only).
// ACT_BANKS = 2: ACT is two single-port banks (the address's top bit picks one); the compiler puts each
// layer's output in the other bank than its inputs, and a read of the bank being written in the same
// cycle sets the sticky error bit (a wrong allocation cannot pass silently). WGT_SINGLE_PORT = 1: WGT is
// a single-port RAM the host loads while the engine is idle (no initial contents). Both map onto the
// iCE40 UP5K's SPRAM.
module npu_top #(
    parameter LANES = 8,
    parameter ACT_BANKS = 1,
    parameter WGT_SINGLE_PORT = 0,
    parameter ACT_WORDS = 4096,
    parameter WGT_WORDS = 4096,
    parameter PAR_WORDS = 512,
    parameter LUT_BYTES = 4096,
    parameter TAP_WORDS = 1024,
    parameter PROG_WORDS = 1024,
    parameter WGT_INIT = "",
    parameter PAR_INIT = "",
    parameter LUT_INIT = "",
    parameter TAP_INIT = "",
    parameter PROG_INIT = ""
) (
    input  wire        clk,
    input  wire        rst,
    input  wire [23:0] h_addr,
    input  wire [7:0]  h_wdata,
    input  wire        h_we,
    input  wire        h_re,
    output reg  [7:0]  h_rdata,
    output reg         h_rvalid,
    output wire        busy,
    output wire        done,
    output wire        layer_done   // pulse per retired layer (profiling, interrupts)
);
    localparam LG = (LANES > 1) ? $clog2(LANES) : 1;
    localparam LGL = $clog2(LANES);
    localparam ACT_AW = $clog2(ACT_WORDS), WGT_AW = $clog2(WGT_WORDS), PAR_AW = $clog2(PAR_WORDS),
               LUT_AW = $clog2(LUT_BYTES), TAP_AW = $clog2(TAP_WORDS), PROG_AW = $clog2(PROG_WORDS);

    wire [3:0]  region = h_addr[23:20];
    wire [19:0] off = h_addr[19:0];
    wire        hw = h_we && !busy;
    wire        error, core_error;
    wire [31:0] cycles, layers;

    wire [PROG_AW-1:0] prog_raddr;  wire [31:0] prog_rdata;
    wire [TAP_AW-1:0]  tap_raddr;   wire [63:0] tap_rdata;
    wire [WGT_AW-1:0]  wgt_raddr;   wire [8*LANES-1:0] wgt_rdata;
    wire [ACT_AW-1:0]  core_act_raddr, core_act_waddr; wire [8*LANES-1:0] act_rdata, core_act_wdata;
    wire               core_act_we, core_act_re;
    wire [PAR_AW-1:0]  par_raddr;   wire [71:0] par_rdata;
    wire [LUT_AW-1:0]  lut_raddr;   wire [7:0] lut_rdata;

    reg start;
    always @(posedge clk) start <= !rst && h_we && region == 4'd0 && off == 20'd0 && h_wdata[0] && !busy;

    npu_core #(.LANES(LANES), .LG(LG), .ACT_AW(ACT_AW), .WGT_AW(WGT_AW), .PAR_AW(PAR_AW), .LUT_AW(LUT_AW),
               .TAP_AW(TAP_AW), .PROG_AW(PROG_AW)) core (
        .clk(clk), .rst(rst), .start(start), .busy(busy), .done(done), .error(core_error), .cycles(cycles),
        .layers(layers), .layer_done(layer_done), .prog_raddr(prog_raddr), .prog_rdata(prog_rdata), .tap_raddr(tap_raddr),
        .tap_rdata(tap_rdata), .wgt_raddr(wgt_raddr), .wgt_rdata(wgt_rdata), .act_raddr(core_act_raddr),
        .act_rdata(act_rdata), .act_re(core_act_re), .act_we(core_act_we), .act_waddr(core_act_waddr), .act_wdata(core_act_wdata),
        .par_raddr(par_raddr), .par_rdata(par_rdata), .lut_raddr(lut_raddr), .lut_rdata(lut_rdata));

    // byte lane of a host write into a LANES-wide word
    wire [LANES-1:0] lane_we = {{(LANES-1){1'b0}}, 1'b1} << (off & (LANES - 1));

    wire [LANES-1:0]  act_we = busy ? {LANES{core_act_we}} : ((hw && region == 4'd1) ? lane_we : {LANES{1'b0}});
    wire [ACT_AW-1:0] act_waddr = busy ? core_act_waddr : off[ACT_AW+LGL-1:LGL];
    wire [ACT_AW-1:0] act_raddr = busy ? core_act_raddr : off[ACT_AW+LGL-1:LGL];
    wire [8*LANES-1:0] act_wdata = busy ? core_act_wdata : {LANES{h_wdata}};
    reg bank_error;
    generate if (ACT_BANKS == 2) begin : act_banked
        localparam BW = ACT_AW - 1;
        wire wbank = act_waddr[BW], rbank = act_raddr[BW];
        wire [8*LANES-1:0] rdata0, rdata1;
        reg rbank_q;
        npu_spram #(.NB(LANES), .DEPTH(ACT_WORDS / 2), .AW(BW)) bank0 (
            .clk(clk), .we(wbank ? {LANES{1'b0}} : act_we), .addr((|act_we && !wbank) ? act_waddr[BW-1:0] : act_raddr[BW-1:0]),
            .wdata(act_wdata), .rdata(rdata0));
        npu_spram #(.NB(LANES), .DEPTH(ACT_WORDS / 2), .AW(BW)) bank1 (
            .clk(clk), .we(wbank ? act_we : {LANES{1'b0}}), .addr((|act_we && wbank) ? act_waddr[BW-1:0] : act_raddr[BW-1:0]),
            .wdata(act_wdata), .rdata(rdata1));
        always @(posedge clk) begin
            rbank_q <= rbank;
            if (rst || start) bank_error <= 1'b0;
            else if (busy && core_act_we && core_act_re && wbank == rbank) bank_error <= 1'b1;
        end
        assign act_rdata = rbank_q ? rdata1 : rdata0;
    end else begin : act_dual
        npu_ram #(.NB(LANES), .DEPTH(ACT_WORDS), .AW(ACT_AW)) act (
            .clk(clk), .we(act_we), .waddr(act_waddr), .wdata(act_wdata), .raddr(act_raddr), .rdata(act_rdata));
        always @(posedge clk) bank_error <= 1'b0;
    end endgenerate
    assign error = core_error | bank_error;

    wire [LANES-1:0] wgt_we = (hw && region == 4'd2) ? lane_we : {LANES{1'b0}};
    generate if (WGT_SINGLE_PORT) begin : wgt_single
        npu_spram #(.NB(LANES), .DEPTH(WGT_WORDS), .AW(WGT_AW)) wgt (
            .clk(clk), .we(wgt_we), .addr(busy ? wgt_raddr : off[WGT_AW+LGL-1:LGL]), .wdata({LANES{h_wdata}}),
            .rdata(wgt_rdata));
    end else begin : wgt_dual
        npu_ram #(.NB(LANES), .DEPTH(WGT_WORDS), .AW(WGT_AW), .INIT(WGT_INIT)) wgt (
            .clk(clk), .we(wgt_we), .waddr(off[WGT_AW+LGL-1:LGL]), .wdata({LANES{h_wdata}}), .raddr(wgt_raddr),
            .rdata(wgt_rdata));
    end endgenerate
    npu_ram #(.NB(9), .DEPTH(PAR_WORDS), .AW(PAR_AW), .INIT(PAR_INIT)) par (
        .clk(clk), .we((hw && region == 4'd3 && off[3:0] < 4'd9) ? (9'd1 << off[3:0]) : 9'd0),
        .waddr(off[PAR_AW+3:4]), .wdata({9{h_wdata}}), .raddr(par_raddr), .rdata(par_rdata));
    npu_ram #(.NB(1), .DEPTH(LUT_BYTES), .AW(LUT_AW), .INIT(LUT_INIT)) lut (
        .clk(clk), .we(hw && region == 4'd4), .waddr(off[LUT_AW-1:0]), .wdata(h_wdata),
        .raddr(lut_raddr), .rdata(lut_rdata));
    npu_ram #(.NB(8), .DEPTH(TAP_WORDS), .AW(TAP_AW), .INIT(TAP_INIT)) tap (
        .clk(clk), .we((hw && region == 4'd5) ? (8'd1 << off[2:0]) : 8'd0), .waddr(off[TAP_AW+2:3]),
        .wdata({8{h_wdata}}), .raddr(tap_raddr), .rdata(tap_rdata));
    npu_ram #(.NB(4), .DEPTH(PROG_WORDS), .AW(PROG_AW), .INIT(PROG_INIT)) prog (
        .clk(clk), .we((hw && region == 4'd6) ? (4'd1 << off[1:0]) : 4'd0), .waddr(off[PROG_AW+1:2]),
        .wdata({4{h_wdata}}), .raddr(prog_raddr), .rdata(prog_rdata));

    // host reads: one cycle after h_re
    reg [3:0]  rd_region;
    reg [19:0] rd_off;
    reg [31:0] reg_word;
    always @* begin
        case (rd_off[4:2])
            3'd0: reg_word = {29'd0, error, done, busy};
            3'd1: reg_word = cycles;
            3'd2: reg_word = layers;
            3'd4: reg_word = LANES;
            3'd5: reg_word = ACT_WORDS;
            3'd6: reg_word = WGT_WORDS;
            3'd7: reg_word = PAR_WORDS;
            default: reg_word = 32'd0;
        endcase
        if (rd_region == 4'd1) h_rdata = act_rdata[8*(rd_off & (LANES - 1)) +: 8];
        else if (rd_region == 4'd0) h_rdata = reg_word[8*rd_off[1:0] +: 8];
        else h_rdata = 8'd0;
    end
    always @(posedge clk) begin
        h_rvalid <= h_re && !rst;
        rd_region <= region;
        rd_off <= off;
    end
endmodule
